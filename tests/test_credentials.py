"""The bot's token goes only where it belongs, and a refused token loses nothing.

Allow-list (`SERVICE_URL_HOSTS`): with authentication on, the Bearer token is attached only to https service
URLs whose host is on the list; an inbound activity or a stored reference pointing elsewhere is refused, logged
and counted, and nothing is sent there. The doubles run on 127.0.0.1, so these tests set the variable to it as an
operator of a test setup would (the default list is Microsoft's Bot Connector hosts).

401: Teams refusing the bot's token makes the bot drop its cached token, get a fresh one from the identity
service (the identity double, over TLS) and retry once; refused again, sending pauses with every row pending,
/healthz answers 503 `credentials refused`, and sending resumes by itself once a token works.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from bot.config import ConfigError, load_config
from bot.service_urls import DEFAULT_SERVICE_URL_HOSTS, ServiceUrlHosts, parse_hosts
from state.clock import FakeClock
from state.outbox import OutboxItem
from state.references import ConversationRecord
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble
from tests.identity_double import IdentityDouble
from tests.test_auth import APP_ID, SECRET, auth_config, notify, settle, signed, start_ready


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityDouble]:
    async with IdentityDouble(tmp_path, clients={APP_ID: SECRET}) as double:
        yield double


@pytest.fixture
async def double(identity: IdentityDouble) -> AsyncIterator[ConnectorDouble]:
    connector = ConnectorDouble()
    await connector.start(ssl_context=identity.server_context())
    yield connector
    await connector.stop()


async def metric(http: aiohttp.ClientSession, app: object, name: str) -> float:
    async with http.get(bot_url(app, "/metrics")) as response:  # type: ignore[arg-type]
        text = await response.text()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name))


async def healthz(http: aiohttp.ClientSession, app: object) -> tuple[int, dict[str, object]]:
    async with http.get(bot_url(app, "/healthz?detail=1")) as response:  # type: ignore[arg-type]
        return response.status, await response.json()


# ---- the allow-list ------------------------------------------------------------------------------------------


def test_the_default_list_is_the_bot_connector_hosts_of_the_public_and_government_clouds() -> None:
    assert load_config({}, None).service_url_hosts == DEFAULT_SERVICE_URL_HOSTS
    hosts = ServiceUrlHosts()
    for url in ("https://smba.trafficmanager.net/amer/", "https://smba.trafficmanager.net/teams/",
                "https://smba.infra.gcc.teams.microsoft.com/", "https://smba.infra.gov.teams.microsoft.us/",
                "https://smba.infra.dod.teams.microsoft.us/", "https://SMBA.trafficmanager.net./emea/"):
        assert hosts.refusal(url) is None, url
    for url in ("http://smba.trafficmanager.net/amer/", "https://smba.trafficmanager.net.evil.example/",
                "https://evil.example/smba.trafficmanager.net/", "https://127.0.0.1/", "https://x.smba.trafficmanager.net/",
                "not a url", "https://user@evil.example/"):
        assert hosts.refusal(url) is not None, url


def test_a_leading_star_matches_subdomains_only() -> None:
    hosts = ServiceUrlHosts(parse_hosts(" *.Example.test , 127.0.0.1,"))
    assert hosts.hosts == ("*.example.test", "127.0.0.1")
    assert hosts.refusal("https://smba.example.test/x") is None
    assert hosts.refusal("https://a.b.example.test:8443/") is None
    assert hosts.refusal("https://example.test/") is not None
    assert hosts.refusal("https://evilexample.test/") is not None
    assert hosts.refusal("https://127.0.0.1:9/") is None


@pytest.mark.parametrize("value", ["https://smba.trafficmanager.net", "smba.trafficmanager.net:443", "a b",
                                   ",", "*.", "smba..net", "ex_ample.com", "x\r\ny"])
def test_a_bad_list_stops_start_up_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="SERVICE_URL_HOSTS"):
        load_config({"SERVICE_URL_HOSTS": value}, None)


async def test_an_activity_from_a_host_off_the_list_is_refused_counted_and_nothing_is_sent(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, caplog: pytest.LogCaptureFixture,
) -> None:
    app = await start_ready(start_bot, auth_config(tmp_path, identity, service_url_hosts=DEFAULT_SERVICE_URL_HOSTS))
    chat = Chat(http, app, double, authorization=signed(identity))
    for _ in range(3):
        activity = chat.activity("message", text="help")
        async with http.post(bot_url(app), json=activity,
                             headers={"Authorization": signed(identity)(activity)}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["field"] == "serviceUrl"
    await settle(app)
    assert list(double.requests) == []
    assert await app.references.get(chat.conversation_id) is None
    assert await metric(http, app, 'bot_service_url_refused_total{where="inbound"}') == 3, "each one counted"
    assert len([r for r in caplog.records if "not in SERVICE_URL_HOSTS" in r.getMessage()]) == 1, "logged once"


@pytest.mark.parametrize("where", ["another host", "plain http"])
async def test_a_stored_reference_off_the_list_gets_no_token_and_no_request(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, caplog: pytest.LogCaptureFixture, where: str,
) -> None:
    """A database filled in local mode, or moved with state.transfer, may point anywhere."""
    app = await start_ready(start_bot, auth_config(tmp_path, identity))
    port = double.url.rsplit(":", 1)[1].strip("/")
    elsewhere = f"https://localhost:{port}/" if where == "another host" else f"http://127.0.0.1:{port}/"
    await app.references.upsert(ConversationRecord(
        conversation_id="a:moved", channel_id="msteams", service_url=elsewhere,
        reference={"conversation": {"id": "a:moved"}, "bot": {"id": "28:bot"}, "serviceUrl": elsewhere},
        tenant_id="t1", conversation_type="personal", user_id="29:moved", bot_id="28:bot"), reactivate=True)
    [admission] = await app.proactive.enqueue([OutboxItem(
        payload={"type": "message", "text": "to the moved chat"}, conversation_id="a:moved", tenant_id="t1",
        category="notification")])
    await settle(app)
    row = await app.outbox.get(admission.id)
    assert row is not None and row.status == "failed" and "ServiceUrlNotAllowed" in (row.last_error or ""), row
    assert list(double.requests) == [], "nothing, and no token, went to the host off the list"
    assert await metric(http, app, 'bot_service_url_refused_total{where="outbound"}') == 1
    assert "not sending to" in caplog.text and "SERVICE_URL_HOSTS" in caplog.text

    chat = Chat(http, app, double, authorization=signed(identity))  # the listed host still gets its sends
    await chat.say("help")
    assert {r.authorization for r in double.find(op="reply")} == {f"Bearer {identity.issued[-1]}"}


# ---- 401: a fresh token once, then a pause that loses nothing -------------------------------------------------


async def test_a_401_drops_the_cached_token_and_retries_once_with_a_fresh_one(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble,
) -> None:
    app = await start_ready(start_bot, auth_config(tmp_path, identity))
    [first] = identity.issued
    double.accepts_token = lambda header: header != f"Bearer {first}"  # the cached token was revoked (a rotation)
    chat = Chat(http, app, double, authorization=signed(identity))
    assert await chat.post(chat.activity("conversationUpdate")) == 200
    answer = await notify(http, app, {"to": {"conversations": [chat.conversation_id]}, "text": "after rotation"})
    await settle(app)
    assert len(identity.issued) == 2 and identity.counts["token"] == 2
    sends = double.find(op="send", conversation_id=chat.conversation_id)
    assert [(s.status, s.authorization) for s in sends] == [(401, f"Bearer {first}"),
                                                           (201, f"Bearer {identity.issued[1]}")]
    row = await app.outbox.get(answer["ids"][0])
    assert row is not None and row.status == "sent" and row.attempts == 1
    await chat.say("help")  # later calls use the fresh token at once
    assert double.find(op="reply")[-1].authorization == f"Bearer {identity.issued[1]}"
    assert (await healthz(http, app))[0] == 200


async def test_refused_credentials_pause_sending_with_nothing_lost_and_it_resumes_by_itself(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    app = await start_ready(start_bot, auth_config(tmp_path, identity))
    chats = [Chat(http, app, double, conversation_id=f"dm-{n}", user_id=f"29:u{n}", authorization=signed(identity))
             for n in range(3)]
    for chat in chats:
        assert await chat.post(chat.activity("conversationUpdate")) == 200
    double.accepts_token = lambda header: False  # the registration changed: Teams refuses every token
    ids = (await notify(http, app, {"to": {"all": True}, "text": "during the outage"}))["ids"]
    for _ in range(8):  # more rounds than a message's 6 attempts
        await settle(app)
        fake_clock.advance(61)
    rows = [await app.outbox.get(row_id) for row_id in ids]
    assert [(r.status, r.attempts) for r in rows if r is not None] == [("pending", 0)] * 3
    status, report = await healthz(http, app)
    reasons = report["reasons"]
    assert status == 503 and isinstance(reasons, list) and any("credentials refused" in r for r in reasons)
    assert await metric(http, app, "bot_teams_credentials_refused_total") >= 2
    refused = double.find(status=401)
    assert len(refused) <= 2 + 2 * 8, "while paused, only probes reach Teams, not every row every round"
    assert len([r for r in caplog.records if "sending paused" in r.getMessage()
                and r.levelno == logging.ERROR]) == 1, "one line when it breaks"
    assert await chats[0].post(chats[0].activity("message", text="help")) == 200, "turns still answer"

    async def statuses() -> list[str | None]:
        return [row.status if (row := await app.outbox.get(row_id)) else None for row_id in ids]

    double.accepts_token = None  # the operator fixed it
    for _ in range(12):
        fake_clock.advance(301)
        await settle(app)
        if await statuses() == ["sent"] * 3:
            break
    assert await statuses() == ["sent"] * 3
    assert (await healthz(http, app))[0] == 200
    assert "sending resumes" in caplog.text
    assert chats[0].texts(), "the reply that waited in the outbox went out too"


def test_the_config_keeps_a_list_given_in_the_environment() -> None:
    config = load_config({"SERVICE_URL_HOSTS": "smba.trafficmanager.net,*.internal.example"}, None)
    assert config.service_url_hosts == ("smba.trafficmanager.net", "*.internal.example")
    assert replace(config, service_url_hosts=("127.0.0.1",)).service_url_hosts == ("127.0.0.1",)


async def test_the_sdks_own_calls_renew_the_token_on_a_401_too(
    tmp_path: Path, start_bot: StartBot, identity: IdentityDouble, double: ConnectorDouble,
) -> None:
    """Rosters go through the SDK's msrest client (connector.AiohttpSender): the same renewal applies."""
    app = await start_ready(start_bot, auth_config(tmp_path, identity))
    [first] = identity.issued
    double.accepts_token = lambda header: header != f"Bearer {first}"
    team = "19:team@thread.tacv2"
    double.add_conversation(team, "t1", members=[{"id": "29:ada", "name": "Ada"}, {"id": "29:bob", "name": "Bob"}])
    record = ConversationRecord(
        conversation_id=team, channel_id="msteams", service_url=double.url,
        reference={"conversation": {"id": team}, "bot": {"id": "28:bot"}, "serviceUrl": double.url},
        tenant_id="t1", conversation_type="channel", bot_id="28:bot")
    members, _ = await app.teams.roster.team_members_page(record, team, None)
    assert {m.id for m in members} == {"29:ada", "29:bob"}
    pages = double.find(op="get_paged_members")
    assert [(p.status, p.authorization) for p in pages] == [(401, f"Bearer {first}"),
                                                           (200, f"Bearer {identity.issued[1]}")]


async def test_a_rotated_secret_loses_nothing_once_the_operator_sets_the_new_one(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    """The secret was rotated in Entra: the identity service refuses the old one. Rows wait, /healthz says why;
    the operator sets the new secret and restarts; everything goes."""
    identity.clients[APP_ID] = "the-new-secret"
    app = await start_bot(auth_config(tmp_path, identity))
    assert app.teams.tokens is not None
    await app.teams.tokens.settle()
    chat = Chat(http, app, double, authorization=signed(identity))
    assert await chat.post(chat.activity("conversationUpdate")) == 200
    assert await chat.post(chat.activity("message", text="help")) == 200  # the reply waits in the outbox
    ids = (await notify(http, app, {"to": {"all": True}, "text": "while rotated"}))["ids"]
    for _ in range(8):
        fake_clock.advance(61)
        await settle(app)
    status, report = await healthz(http, app)
    reasons = report["reasons"]
    assert status == 503 and isinstance(reasons, list) and any("credentials refused" in r for r in reasons), report
    assert list(double.requests) == []
    pending = await app.outbox.counts()
    assert pending.get("pending", 0) >= 2, pending
    await app.stop()

    fixed = await start_ready(start_bot, auth_config(tmp_path, identity, app_password="the-new-secret"))
    for _ in range(3):
        fake_clock.advance(61)
        await settle(fixed)
    row = await fixed.outbox.get(ids[0])
    assert row is not None and row.status == "sent" and row.attempts == 1
    assert chat.texts(), "the reply that waited went out too"
    assert (await fixed.outbox.counts()).get("pending", 0) == 0
    assert (await healthz(http, fixed))[0] == 200
