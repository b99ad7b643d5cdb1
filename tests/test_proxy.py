"""Behind the organisation's proxy: every outbound call goes through a real forward proxy (squid,
tests/proxy_server.py).

The doubles listen on 127.0.0.1 but are named only by test names no resolver answers (`login.example.test`,
`smba.example.test`, `prices.example.test`), which the proxy's hosts_file maps to 127.0.0.1: a call that bypassed
the proxy would fail to resolve. The proxy wants Basic credentials, given in the proxy URL (`HTTPS_PROXY=
http://user:password@proxy:port`, lower-case names too). Covered: the channel's OpenID metadata and signing keys,
the bot's token (client secret and managed identity, azure-identity), turn replies and proactive sends (our
keep-alive client, through a CONNECT tunnel), rosters (the SDK's msrest client), the price source (HTTP_PROXY),
Graph (its tokens and calls), and NO_PROXY.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.config import Config, ConfigError, load_config
from bot.graph.client import GraphClient
from bot.prices.sources import HttpJsonSource
from bot.proxy import ProxySettings, parse_proxy
from bot.teams.connector import SharedSession
from bot.teams.graph_tokens import GraphTokens
from bot.teams.http1 import ConnectionLost, ConnectionPool
from bot.tls import trust_context
from state.clock import FakeClock
from tests.chat import Chat
from tests.conftest import StartBot
from tests.connector_double import ConnectorDouble
from tests.graph_double import GraphDouble
from tests.identity_double import IdentityDouble
from tests.proxy_server import PASSWORD, USER, SquidProxy
from tests.raw_http import RawServer
from tests.test_auth import APP_ID, SECRET, auth_config, notify, settle, signed, start_ready
from tests.test_graph import APP_ID as GRAPH_APP
from tests.test_graph import CATALOG_ID, TENANT
from tests.test_graph import SECRET as GRAPH_SECRET
from tests.test_graph import USER as GRAPH_USER


@pytest.fixture(scope="session")
def squid() -> Iterator[SquidProxy]:
    proxy, reason = SquidProxy.find()
    if proxy is not None:
        try:
            proxy.start()
        except Exception as exc:  # any start-up failure is the reason to skip
            reason, proxy = f"squid did not start: {exc}", None
    if proxy is None:
        print(f"forward proxy unavailable: {reason}", file=sys.stderr)
        if os.environ.get("REQUIRE_PROXY") == "1":
            pytest.fail(f"{reason}\n(REQUIRE_PROXY=1, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(f"forward proxy unavailable: {reason}")
    yield proxy
    proxy.stop()


def named(url: str, name: str) -> str:
    """`https://127.0.0.1:PORT/…` as `https://NAME:PORT/…`."""
    return url.replace("127.0.0.1", name, 1)


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityDouble]:
    async with IdentityDouble(tmp_path, clients={APP_ID: SECRET}) as double:
        double.url = named(double.url, "login.example.test")  # its documents and tokens name it so
        yield double


@pytest.fixture
async def double(identity: IdentityDouble) -> AsyncIterator[ConnectorDouble]:
    connector = ConnectorDouble()
    await connector.start(ssl_context=identity.server_context(), name="smba.example.test")
    yield connector
    await connector.stop()


def through(squid: SquidProxy, **extra: str) -> ProxySettings:
    return ProxySettings.from_values({"https_proxy": squid.url_with_credentials, **extra})


def tunnels(squid: SquidProxy, name: str) -> int:
    """How many CONNECT tunnels to `name` the proxy logged for its authenticated user (it logs a tunnel when it
    closes)."""
    return sum(1 for line in squid.log().splitlines()
               if f" CONNECT {name}:" in line and f" {USER} " in line and "/200 " in line)


async def logged(squid: SquidProxy, check: Callable[[], bool]) -> bool:
    """Wait (at most 10 s) for squid to write what `check` looks for: it logs a transaction when it ends."""
    for _ in range(200):
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


# ---- the variables ---------------------------------------------------------------------------------------------


def test_the_variables_lower_case_first_credentials_and_no_proxy() -> None:
    settings = load_config({"HTTPS_PROXY": "http://ignored:1", "https_proxy": "http://u:p%40ss@proxy.corp:3128",
                            "HTTP_PROXY": "proxy.corp:8080", "NO_PROXY": "internal.corp,.svc:8443"}, None).proxies
    assert settings.https is not None and settings.http is not None
    assert (settings.https.host, settings.https.port, settings.https.username, settings.https.password) == (
        "proxy.corp", 3128, "u", "p@ss")
    assert settings.https.authorization == "Basic dTpwQHNz" and "p@ss" not in repr(settings)
    assert settings.for_url("https://smba.trafficmanager.net/amer/") == settings.https
    assert settings.for_url("http://prices.example/x") == settings.http
    assert settings.for_url("https://internal.corp/x") is None
    assert settings.for_url("https://a.internal.corp/x") is None
    assert settings.for_url("https://b.svc:8443/") is None and settings.for_url("https://b.svc:443/") is not None
    for local in ("http://127.0.0.1:41234/msi/token", "http://localhost:1/", "http://[::1]:5/",
                  "http://169.254.169.254/metadata/identity/oauth2/token"):
        assert settings.for_url(local) is None, local
    assert not ProxySettings.from_values({}).enabled
    assert ProxySettings.from_values({"NO_PROXY": "*", "HTTPS_PROXY": "http://p:1"}).for_url("https://x/") is None


@pytest.mark.parametrize("value", ["https://proxy:3128", "socks5://proxy:1080", "http://proxy:99999",
                                   "http://proxy:3128/path", "http://"])
def test_a_bad_proxy_url_stops_start_up_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="HTTPS_PROXY"):
        load_config({"HTTPS_PROXY": value}, None)
    with pytest.raises(ValueError, match=r"HTTPS_PROXY") as refused:
        parse_proxy("HTTPS_PROXY", value.replace("://", "://user:secret@", 1))
    assert "secret" not in str(refused.value), "a password never reaches the error line"


# ---- the bot behind the proxy ----------------------------------------------------------------------------------


async def test_keys_tokens_replies_sends_and_rosters_all_go_through_the_proxy(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, squid: SquidProxy,
) -> None:
    config = replace(auth_config(tmp_path, identity), proxies=through(squid),
                     service_url_hosts=("smba.example.test",))
    app = await start_ready(start_bot, config)
    assert app.teams.signing_keys is not None and app.teams.signing_keys.loads == 1, "keys came through the proxy"
    assert identity.counts["token"] == 1 and identity.issued

    chat = Chat(http, app, double, conversation_id="19:team@thread.tacv2", user_id="29:ada",
                authorization=signed(identity))
    await chat.say("help")  # a turn's reply: our client, a CONNECT tunnel
    assert double.find(op="reply")
    assert await chat.post(chat.activity("conversationUpdate")) == 200
    answer = await notify(http, app, {"to": {"conversations": [chat.conversation_id]}, "text": "via the proxy"})
    await settle(app)
    row = await app.outbox.get(answer["ids"][0])
    assert row is not None and row.status == "sent", row

    double.add_conversation("19:team@thread.tacv2", "t1", members=[
        {"id": "29:ada", "name": "Ada", "aadObjectId": "aad-ada"}, {"id": "29:bob", "name": "Bob"}])
    record = await app.references.get("19:team@thread.tacv2")
    assert record is not None
    # the SDK's msrest client
    members, _ = await app.teams.roster.team_members_page(record, "19:team@thread.tacv2", None)
    assert {m.id for m in members} == {"29:ada", "29:bob"}
    assert double.find(op="get_paged_members")

    assert {r.authorization for r in double.find(op="send")} == {f"Bearer {identity.issued[-1]}"}
    # The names resolve only inside the proxy, so all of the above went through it; its log says so too once
    # the tunnels close: metadata, keys, token (+ discovery); our client's, and msrest's over aiohttp.
    await app.teams.session.close()
    assert await logged(squid, lambda: tunnels(squid, "login.example.test") >= 2
                        and tunnels(squid, "smba.example.test") >= 2), squid.log()


async def test_a_managed_identity_token_comes_through_the_proxy(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, squid: SquidProxy, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", identity.msi_endpoint)  # a managed identity endpoint off the machine
    monkeypatch.setenv("IDENTITY_HEADER", identity.msi_header)
    config = replace(auth_config(tmp_path, identity, app_type="UserAssignedMSI", app_password="",
                                 app_tenant_id="tenant-1"),
                     proxies=through(squid), service_url_hosts=("smba.example.test",))
    app = await start_ready(start_bot, config)
    chat = Chat(http, app, double, authorization=signed(identity))
    await chat.say("help")
    assert [r.route for r in identity.requests if r.route == "msi"] and identity.issued
    assert {r.authorization for r in double.find(op="reply")} == {f"Bearer {identity.issued[-1]}"}


async def test_without_credentials_the_proxy_refuses_and_nothing_is_lost(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, squid: SquidProxy,
) -> None:
    config = replace(auth_config(tmp_path, identity), proxies=ProxySettings.from_values({"HTTPS_PROXY": squid.url}),
                     service_url_hosts=("smba.example.test",))
    app = await start_bot(config)
    assert app.teams.signing_keys is not None and app.teams.signing_keys.loads == 0
    assert identity.counts["metadata"] == 0 and list(double.requests) == []
    pool = ConnectionPool(proxies=ProxySettings.from_values({"HTTPS_PROXY": squid.url}))
    try:
        with pytest.raises(ConnectionLost, match="407"):
            await pool.request("POST", double.url, "v3/conversations/a/activities", {}, b"{}")
    finally:
        await pool.close()


async def test_no_proxy_hosts_go_direct(squid: SquidProxy, identity: IdentityDouble,
                                        double: ConnectorDouble) -> None:
    """smba.example.test in NO_PROXY: the client connects directly, and the name resolves nowhere but in the
    proxy, so the call fails without the proxy ever seeing it; login.example.test still goes through it."""
    proxies = through(squid, no_proxy="smba.example.test")
    before = tunnels(squid, "smba.example.test")
    pool = ConnectionPool(proxies=proxies)
    try:
        with pytest.raises(ConnectionLost, match=r"cannot connect to smba\.example\.test"):
            await pool.request("POST", double.url, "v3/conversations/a/activities", {}, b"{}")
    finally:
        await pool.close()
    assert tunnels(squid, "smba.example.test") == before


async def test_plain_http_goes_through_http_proxy_in_absolute_form(squid: SquidProxy) -> None:
    async with RawServer() as raw:
        url = named(raw.url, "smba.example.test")
        pool = ConnectionPool(proxies=ProxySettings.from_values({"http_proxy": squid.url_with_credentials}))
        try:
            got = await pool.request("POST", url, "v3/conversations/a%3A1/activities", {"Accept": "a/b"}, b"{}")
        finally:
            await pool.close()
    assert got.status == 200
    assert raw.requests[0].target == "/v3/conversations/a%3A1/activities"
    assert "proxy-authorization" not in raw.requests[0].headers, "the proxy's credentials stay with the proxy"
    assert await logged(squid, lambda: f"POST {url}v3/conversations/a%3A1/activities {USER}" in squid.log())


async def test_the_price_source_goes_through_http_proxy(squid: SquidProxy) -> None:
    async def item(request: web.Request) -> web.Response:
        return web.json_response({"data": {"price": "9.50"}, "currency": "EUR"})

    app = web.Application()
    app.router.add_get("/items/{product}", item)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    source = HttpJsonSource(f"http://prices.example.test:{port}/items/{{product}}", "data.price",
                            currency_path="currency", clock=FakeClock(), retries=0,
                            proxies=ProxySettings.from_values({"HTTP_PROXY": squid.url_with_credentials}))
    try:
        quote = await source.fetch("gadget")
    finally:
        await source.close()
        await runner.cleanup()
    assert quote is not None and str(quote.price) == "9.50" and quote.currency == "EUR"
    assert await logged(squid, lambda: f"GET http://prices.example.test:{port}/items/gadget {USER}" in squid.log())


async def test_the_credentials_in_the_url_are_what_the_proxy_checks(squid: SquidProxy) -> None:
    wrong = ProxySettings.from_values({"HTTP_PROXY": squid.url_with_credentials.replace("%40", "x")})
    async with RawServer() as raw:
        pool = ConnectionPool(proxies=wrong)
        try:
            got = await pool.request("GET", named(raw.url, "smba.example.test"), "x", {}, b"")
        finally:
            await pool.close()
    assert got.status == 407 and raw.requests == []
    assert PASSWORD not in squid.log()



async def test_graph_tokens_and_calls_go_through_the_proxy(
    tmp_path: Path, identity: IdentityDouble, squid: SquidProxy, fake_clock: FakeClock,
) -> None:
    identity.clients[GRAPH_APP] = GRAPH_SECRET
    async with GraphDouble(tmp_path, identity, clock=fake_clock.monotonic) as graph:
        graph.url = graph.audience = named(graph.url, "graph.example.test")
        graph.add_tenant(TENANT, {GRAPH_USER}, catalog={GRAPH_APP: CATALOG_ID})
        session = SharedSession(ssl_context=trust_context([identity.ca_file, graph.ca_file]), proxies=through(squid))
        config = Config(app_id=GRAPH_APP, app_password=GRAPH_SECRET, login_url=identity.login_url(),
                        graph_url=graph.url)
        tokens = GraphTokens(config, session, fake_clock)
        try:
            client = GraphClient(session.get, tokens.for_tenant, graph.url, proxy_for=session.proxy_for)
            assert await client.catalog_app_id(TENANT, GRAPH_APP) == CATALOG_ID
            assert await client.install_for_user(TENANT, GRAPH_USER, CATALOG_ID) is True
        finally:
            await tokens.close()
            await session.close()
    assert await logged(squid, lambda: tunnels(squid, "graph.example.test") >= 1), squid.log()
