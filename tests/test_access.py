"""Who may do what, over HTTP: Teams only, allowed tenants only, tokens per API, cheap public probes, and
loopback Host names in local mode (issue 20)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import pytest

from bot.access import AllowedTenants, bearer_matches, loopback_host
from bot.api.health import CachedHealth
from bot.app import BotApplication
from bot.config import ConfigError, load_config
from state.clock import FakeClock
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble
from tests.identity_double import IdentityDouble
from tests.test_auth import APP_ID, SECRET, auth_config

TOKEN = "notify-secret"
PRICES = "prices-secret"
METRICS = "metrics-secret"


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


def in_tenant(http: aiohttp.ClientSession, app: BotApplication, double: ConnectorDouble, tenant: str, n: int) -> Chat:
    return Chat(http, app, double, conversation_id=f"dm-{tenant}-{n}", user_id=f"29:{tenant}-{n}",
                channel_data={"tenant": {"id": tenant}})


# --- Teams only ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channel", ["webchat", "directline", "emulator", "MSTEAMS", "", None])
async def test_an_activity_from_another_channel_is_403_counted_and_leaves_no_trace(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, channel: str | None,
) -> None:
    app = await start_bot()
    chat = Chat(http, app, double)
    activity = chat.activity("message", text="unwatch gadget")
    if channel is None:
        del activity["channelId"]
    else:
        activity["channelId"] = channel
    async with http.post(bot_url(app), json=activity) as response:
        body = await response.json()
    assert response.status == 403 and body["error"]["code"] == "ChannelNotAllowed"
    assert body["error"]["field"] == "channelId"
    await chat.settle()
    assert await app.references.get("dm-ada") is None, "nothing is recorded"
    assert double.sent_activities() == [], "nothing is answered"
    assert 'bot_turns_total{outcome="forbidden",type="message"} 1.0' in app.metrics.exposition().decode()


# --- ALLOWED_TENANTS ----------------------------------------------------------------------------------------------

async def test_allowed_tenants_refuse_other_tenants_activities_notify_targets_and_alerts(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble,
) -> None:
    # Before the operator restricts the tenants, the bot knows people in t1 and t2, with watches in both.
    app = await start_bot(price_source="none", alert_coalesce_seconds=0.0)
    for tenant in ("t1", "t2"):
        await in_tenant(http, app, double, tenant, 1).say("watch gadget below 10")
    await app.stop()
    double.requests.clear()

    app = await start_bot(allowed_tenants=("T1",), notify_token=TOKEN, prices_token=PRICES, price_source="none",
                          alert_coalesce_seconds=0.0)
    t1, t2 = in_tenant(http, app, double, "t1", 1), in_tenant(http, app, double, "t2", 1)
    assert await t2.post(t2.activity("message", text="list")) == 403
    no_tenant = Chat(http, app, double, conversation_id="dm-x", user_id="29:x")
    assert await no_tenant.post({**no_tenant.activity("message", text="list"), "channelData": {}}) == 403
    assert await t1.post(t1.activity("message", text="list")) == 200

    async with http.post(bot_url(app, "/api/notify"), headers={"Authorization": f"Bearer {TOKEN}"},
                         json={"to": {"all": True}, "text": "to everyone"}) as response:
        everyone = await response.json()
    async with http.post(bot_url(app, "/api/notify"), headers={"Authorization": f"Bearer {TOKEN}"},
                         json={"to": {"users": ["29:t2-1"], "conversations": None}, "text": "x"}) as response:
        assert response.status == 202
        named = await response.json()
    assert everyone["queued"] == 1 and named["queued"] == 0 and named["unknown"]["users"] == ["29:t2-1"]
    async with http.post(bot_url(app, "/api/notify"), headers={"Authorization": f"Bearer {TOKEN}"},
                         json={"to": {"conversations": ["dm-t2-1"]}, "text": "x"}) as response:
        assert (await response.json())["unknown"]["conversations"] == ["dm-t2-1"]

    async with http.post(bot_url(app, "/api/prices"), headers={"Authorization": f"Bearer {PRICES}"},
                         json={"product": "gadget", "price": "5", "currency": "USD", "source": "feed"}) as response:
        assert response.status == 202
    await app.scheduler.run_due()
    await t1.settle()
    assert any("gadget" in text for text in t1.texts()), "the allowed tenant's watch alerts"
    assert t2.texts() == [], "nothing reaches the other tenant: no reply, no broadcast, no alert"


# --- tokens -------------------------------------------------------------------------------------------------------

async def push(http: aiohttp.ClientSession, app: BotApplication, headers: dict[str, str]) -> tuple[int, Any]:
    async with http.post(bot_url(app, "/api/prices"), headers=headers,
                         json={"product": "gadget", "price": "5", "currency": "USD", "source": "feed"}) as response:
        return response.status, await response.json()


async def test_prices_api_is_off_without_prices_token_and_refuses_the_notify_token(
    start_bot: StartBot, http: aiohttp.ClientSession,
) -> None:
    app = await start_bot(notify_token=TOKEN, price_source="none")
    status, body = await push(http, app, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 503 and body["error"]["code"] == "PricesDisabled" and "PRICES_TOKEN" in body["error"]["message"]
    await app.stop()
    app = await start_bot(notify_token=TOKEN, prices_token=PRICES, price_source="none")
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {}, {"Authorization": f"Bearer {PRICES}x"},
                    {"Authorization": f"Basic {PRICES}"}, {"Authorization": f"Bearer {PRICES[:-1]}"}):
        status, body = await push(http, app, headers)
        assert status == 401 and "PRICES_TOKEN" in body["error"]["message"], headers
    assert (await push(http, app, {"Authorization": f"Bearer {PRICES}"}))[0] == 202
    async with http.post(bot_url(app, "/api/notify"), headers={"Authorization": f"Bearer {PRICES}"},
                         json={"to": {"all": True}, "text": "x"}) as response:
        assert response.status == 401, "a price feed's token cannot broadcast"


def test_bearer_tokens_match_exactly() -> None:
    assert bearer_matches("Bearer s3cret", "s3cret") and bearer_matches("bearer  s3cret ", "s3cret")
    for header in ("Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret", "", "Bearer \udcff", "Bearer"):
        assert not bearer_matches(header, "s3cret"), header
    assert not bearer_matches("Bearer ", ""), "an unset token matches nothing"


# --- probes and metrics -------------------------------------------------------------------------------------------

class HealthStatements:
    """Counts the database statements the readiness check makes, at the database seam (both engines)."""

    def __init__(self, app: BotApplication) -> None:
        self.count = 0
        for name in ("ping", "fetchone", "fetchall", "execute", "executemany"):
            setattr(app.db, name, self._counting(getattr(app.db, name), name))

    def _counting(self, method: Callable[..., Any], name: str) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            frames = _callers(sys._getframe(1))
            if any(f.f_code.co_name == "health" and f.f_code.co_filename.endswith("app.py") for f in frames) and \
                    not (name != "ping" and any(f.f_code.co_name == "ping" for f in frames)):  # SQLite's ping
                self.count += 1
            return method(*args, **kwargs)

        return counted


def _callers(frame: FrameType | None) -> list[FrameType]:
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out


async def test_ten_thousand_probes_cost_one_round_of_queries_per_two_seconds(
    start_bot: StartBot, http: aiohttp.ClientSession, fake_clock: FakeClock,
) -> None:
    app = await start_bot()
    statements = HealthStatements(app)
    async with http.get(bot_url(app, "/healthz")) as response:
        assert response.status == 200 and await response.json() == {"status": "ok"}
    one_round = statements.count
    assert one_round == 1, "the public check pings the database and counts nothing"

    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as probes:
        async def probe(_: int) -> int:
            async with probes.get(bot_url(app, "/healthz")) as answer:
                await answer.read()
                return answer.status

        for start in range(0, 10_000, 500):
            assert set(await asyncio.gather(*(probe(i) for i in range(start, start + 500)))) == {200}
    assert statements.count == one_round, "10,000 probes within 2 s ran no further statement"
    fake_clock.advance(1.9)
    assert (await probe_status(http, app)) == 200 and statements.count == one_round
    fake_clock.advance(0.1)
    assert (await probe_status(http, app)) == 200 and statements.count == 2 * one_round, "never older than 2 s"


async def test_probes_during_a_check_share_it_and_a_hung_up_probe_does_not_cancel_it(fake_clock: FakeClock) -> None:
    runs, gate, started = [], asyncio.Event(), asyncio.Event()

    async def report() -> dict[str, Any]:
        runs.append(fake_clock.monotonic())
        started.set()
        await gate.wait()
        return {"ok": True}

    health = CachedHealth(report, fake_clock)
    probes = [asyncio.ensure_future(health.current()) for _ in range(20)]
    await started.wait()  # the check starts after every probe waits for it (tasks run in order)
    probes[0].cancel()  # a client hangs up
    gate.set()
    assert [await p for p in probes[1:]] == [{"ok": True}] * 19 and len(runs) == 1
    fake_clock.advance(2)
    assert await health.current() == {"ok": True} and len(runs) == 2


async def probe_status(http: aiohttp.ClientSession, app: BotApplication, path: str = "/healthz") -> int:
    async with http.get(bot_url(app, path)) as response:
        await response.read()
        return response.status


async def test_healthz_details_are_behind_the_metrics_token(start_bot: StartBot, http: aiohttp.ClientSession) -> None:
    app = await start_bot(metrics_token=METRICS)
    async with http.get(bot_url(app, "/healthz")) as response:
        assert response.status == 200 and await response.json() == {"status": "ok"}, "no tenants, no reasons"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}"}):
        async with http.get(bot_url(app, "/healthz?detail=1"), headers=headers) as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    async with http.get(bot_url(app, "/healthz?detail=1"), headers={"Authorization": f"Bearer {METRICS}"}) as response:
        body = await response.json()
    assert body["status"] == "ok" and {"replica", "outbox", "delivery", "teams", "database"} <= set(body)
    async with http.get(bot_url(app, "/healthz?detail=yes")) as response:
        assert response.status == 400 and (await response.json())["error"]["field"] == "detail"
    assert await probe_status(http, app, "/metrics") == 401


async def test_healthz_is_503_unavailable_without_reasons_in_public(
    start_bot: StartBot, http: aiohttp.ClientSession, fake_clock: FakeClock,
) -> None:
    app = await start_bot(metrics_token=METRICS)
    await app.db.close()
    async with http.get(bot_url(app, "/healthz")) as response:
        assert response.status == 503 and await response.json() == {"status": "unavailable"}
    async with http.get(bot_url(app, "/healthz?detail=1"), headers={"Authorization": f"Bearer {METRICS}"}) as response:
        assert response.status == 503 and (await response.json())["reasons"] == ["the database does not answer"]


@pytest.mark.parametrize(("env", "ok"), [
    ({"HOST": "0.0.0.0", "MicrosoftAppId": "id", "MicrosoftAppPassword": "pw"}, False),
    ({"HOST": "10.0.0.5", "MicrosoftAppId": "id", "MicrosoftAppPassword": "pw", "ALLOW_OPEN_METRICS": "false"}, False),
    ({"HOST": "0.0.0.0", "MicrosoftAppId": "id", "MicrosoftAppPassword": "pw", "METRICS_TOKEN": "m"}, True),
    ({"HOST": "0.0.0.0", "MicrosoftAppId": "id", "MicrosoftAppPassword": "pw", "ALLOW_OPEN_METRICS": "true"}, True),
    ({"HOST": "127.0.0.1"}, True),
])
def test_open_metrics_on_a_public_address_stop_start_up(env: dict[str, str], ok: bool) -> None:
    if ok:
        assert load_config(env, env_file=None).host == env["HOST"]
    else:
        with pytest.raises(ConfigError, match=r"METRICS_TOKEN is empty .* ALLOW_OPEN_METRICS=true"):
            load_config(env, env_file=None)


@pytest.mark.parametrize(("value", "problem"), [("t1,t 2", "t 2"), ("t1,\x00", "\\x00"), ("x" * 101, "xxx")])
def test_hostile_allowed_tenants_are_refused(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="ALLOWED_TENANTS") as refused:
        load_config({"ALLOWED_TENANTS": value}, env_file=None)
    assert problem in str(refused.value)


def test_allowed_tenants_compare_ids_without_case() -> None:
    assert load_config({"ALLOWED_TENANTS": " T1 , t2,,t1"}, env_file=None).allowed_tenants == ("t1", "t2")
    tenants = AllowedTenants(["T1"])
    assert tenants.allows("t1") and not tenants.allows("t2") and not tenants.allows(None)
    assert AllowedTenants().allows(None) and AllowedTenants().allows("any")


# --- local mode: loopback Host names only -------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "evil.example:3978", "127.0.0.1.evil.example", "localhost.",
                                  "10.0.0.1", "[::2]:3978", "localhost:99999", "127.0.0.1:", ""])
async def test_local_mode_refuses_other_host_names_on_every_route(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, host: str,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    chat = Chat(http, app, double)
    for method, path, body in (("POST", "/api/messages", chat.activity("message", text="help")),
                               ("GET", "/healthz", None), ("GET", "/metrics", None),
                               ("POST", "/api/notify", {"to": {"all": True}, "text": "x"}), ("GET", "/nope", None)):
        async with http.request(method, bot_url(app, path), json=body, skip_auto_headers=["Host"],
                                headers={"Host": host, "Authorization": f"Bearer {TOKEN}"}) as response:
            answer = await response.json()
            assert response.status == 403 and answer["error"]["field"] == "Host", (path, answer)
    assert await app.references.get("dm-ada") is None and double.sent_activities() == []


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:3978", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:3978"])
async def test_local_mode_answers_loopback_host_names(start_bot: StartBot, http: aiohttp.ClientSession,
                                                      host: str) -> None:
    app = await start_bot()
    async with http.get(bot_url(app, "/healthz"), headers={"Host": host}) as response:
        assert response.status == 200


def test_loopback_host_names() -> None:
    assert loopback_host("localhost:65535") and not loopback_host("localhost:0") and not loopback_host(None)


async def test_with_authentication_the_host_name_is_not_checked(
    start_bot: StartBot, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    async with IdentityDouble(tmp_path, clients={APP_ID: SECRET}) as identity:
        app = await start_bot(auth_config(tmp_path, identity))
        async with http.get(bot_url(app, "/healthz"), headers={"Host": "bot.example.com"}) as response:
            assert response.status == 200
        await app.stop()
