"""Authenticated Teams traffic end to end, offline: real JWTs and a real OAuth flow against local doubles over TLS.

The identity double (tests/identity_double.py) serves the channel's OpenID metadata and keys, an OAuth2
token endpoint and App Service's managed identity endpoint over HTTPS with a test CA, which the bot trusts
through `ca_files` (what SSL_CERT_FILE / REQUESTS_CA_BUNDLE set). The issuer and scope are the US
Government cloud's, so it is the sovereign-cloud settings that carry the traffic. The connector double
records the Authorization header of everything the bot sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from bot.config import Config
from state.clock import FakeClock
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble
from tests.identity_double import ROLLED_KID, UNENDORSED_KID, UNPUBLISHED_KID, IdentityDouble

APP_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "client-secret-value"
ISSUER = SCOPE = "https://api.botframework.us"  # ToBotFromChannelTokenIssuer / ToChannelFromBotOAuthScope, US Gov
NOTIFY = "notify-token"
GUARD_S = 10.0  # only guards against a hang; nothing here measures time


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityDouble]:
    async with IdentityDouble(tmp_path, clients={APP_ID: SECRET}) as double:
        yield double


@pytest.fixture
async def double(identity: IdentityDouble) -> AsyncIterator[ConnectorDouble]:
    """With auth on, a serviceUrl must be https: the double serves TLS with the identity double's test CA."""
    connector = ConnectorDouble()
    await connector.start(ssl_context=identity.server_context())
    yield connector
    await connector.stop()


def auth_config(tmp_path: Path, identity: IdentityDouble, **overrides: Any) -> Config:
    base = Config(
        database_url=f"sqlite:///{tmp_path}/bot.sqlite3", app_id=APP_ID, app_password=SECRET,
        open_id_metadata_url=identity.metadata_url, token_issuer=ISSUER, oauth_scope=SCOPE,
        login_url=identity.login_url("botframework.com"), ca_files=(identity.ca_file,), notify_token=NOTIFY,
        service_url_hosts=("127.0.0.1",),  # the doubles' host, as an operator of a test setup would set it
    )
    return replace(base, **overrides)


def signed(identity: IdentityDouble, **token: Any) -> Callable[[dict[str, Any]], str]:
    """The Authorization header the channel would send with an activity (overrides make it wrong)."""

    def authorization(activity: dict[str, Any]) -> str:
        fields = {"issuer": ISSUER, "audience": APP_ID, "service_url": activity["serviceUrl"], **token}
        return "Bearer " + identity.channel_token(**fields)

    return authorization


async def start_ready(start_bot: StartBot, config: Config) -> BotApplication:
    """Start the bot and let its start-up token request finish (it runs in the background), so that
    replies go directly rather than through the outbox: what these tests look at."""
    app = await start_bot(config)
    assert app.teams.tokens is not None
    await asyncio.wait_for(app.teams.tokens.settle(), GUARD_S)
    return app


async def settle(app: BotApplication) -> None:
    for _ in range(3):
        app.worker.pump()
        await app.worker.idle()
    await app.worker.flush()


async def notify(http: aiohttp.ClientSession, app: BotApplication, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(bot_url(app, "/api/notify"), json=body,
                         headers={"Authorization": f"Bearer {NOTIFY}"}) as response:
        assert response.status == 202, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


# ---- inbound: the SDK validates real channel JWTs ----------------------------------------------------------


@pytest.mark.parametrize(("app_type", "tenant"), [("MultiTenant", "botframework.com"), ("SingleTenant", "tenant-1")])
async def test_a_valid_channel_token_is_accepted_and_the_reply_carries_the_bots_token(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, app_type: str, tenant: str,
) -> None:
    config = auth_config(tmp_path, identity, app_type=app_type, login_url=identity.login_url(tenant),
                         app_tenant_id="tenant-1" if app_type == "SingleTenant" else "")
    app = await start_ready(start_bot, config)
    chat = Chat(http, app, double, authorization=signed(identity))
    await chat.say("help")
    replies = double.find(op="reply")
    assert replies, "the turn's reply reached the connector"
    assert {r.authorization for r in replies} == {f"Bearer {identity.issued[-1]}"}
    [token_request] = identity.find("token")
    assert token_request.path == f"/{tenant}/oauth2/v2.0/token"
    assert {k: token_request.form.get(k) for k in ("grant_type", "client_id", "client_secret", "scope")} == {
        "grant_type": "client_credentials", "client_id": APP_ID, "client_secret": SECRET, "scope": f"{SCOPE}/.default"}
    assert await app.references.get(chat.conversation_id) is not None


def _header(identity: IdentityDouble, activity: dict[str, Any], **token: Any) -> str:
    return signed(identity, **token)(activity)


# case → (Authorization header for the activity, the reason the bot logs). All but the first three reasons are the
# SDK's own checks; the bot itself refuses non-channel issuers and skill tokens before any key lookup.
REFUSED: dict[str, tuple[Callable[[IdentityDouble, dict[str, Any]], str | None], str]] = {
    "no header": (lambda i, a: None, "Request is not authorized"),
    "not a bearer token": (lambda i, a: "Basic " + _header(i, a).removeprefix("Bearer "), "not a Bearer token"),
    "wrong issuer": (lambda i, a: _header(i, a, issuer="https://api.botframework.com"), "is not the channel's"),
    "wrong audience": (lambda i, a: _header(i, a, audience="99999999-0000-0000-0000-000000000000"),
                       "Invalid AppId passed on token"),
    "expired": (lambda i, a: _header(i, a, expires_in=-3600), "Signature has expired"),
    "key not endorsed for msteams": (lambda i, a: _header(i, a, kid=UNENDORSED_KID),
                                     "Could not validate endorsement key"),
    "unknown key": (lambda i, a: _header(i, a, kid=UNPUBLISHED_KID), "is not among the channel's keys"),
    "alg none": (lambda i, a: _header(i, a, alg="none"), "algorithm not in allowed list"),
    "serviceurl mismatch": (lambda i, a: _header(i, a, service_url="https://smba.trafficmanager.net/evil/"),
                            "Invalid 'serviceurl' claim"),
    "skill token": (lambda i, a: _header(i, a, ver="1.0", appid="another-bot"), "skill tokens are not accepted"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_bad_tokens_get_401_and_nothing_is_sent(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, caplog: pytest.LogCaptureFixture, case: str,
) -> None:
    app = await start_bot(auth_config(tmp_path, identity))
    caplog.set_level(logging.DEBUG)
    chat = Chat(http, app, double)
    activity = chat.activity("message", text="help")
    make_header, reason = REFUSED[case]
    header = make_header(identity, activity)
    async with http.post(bot_url(app), json=activity, headers={"Authorization": header} if header else {}) as r:
        assert r.status == 401
        assert r.headers.get("WWW-Authenticate") == "Bearer"
        assert "Traceback" not in await r.text()
    await settle(app)
    assert list(double.requests) == [], "nothing may be sent for a refused activity"
    assert await app.references.get(chat.conversation_id) is None, "a refused activity is not recorded"
    assert reason in caplog.text
    no_tracebacks(caplog)


async def test_fifty_turns_need_one_token_and_one_key_fetch(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble,
) -> None:
    app = await start_ready(start_bot, auth_config(tmp_path, identity))
    chats = [Chat(http, app, double, conversation_id=f"dm-{n}", user_id=f"29:u{n}", authorization=signed(identity))
             for n in range(10)]

    async def five_turns(chat: Chat) -> None:
        for _ in range(5):
            await chat.say("help")

    await asyncio.gather(*(five_turns(chat) for chat in chats))
    replies = double.find(op="reply")
    print(f"\n50 turns: {len(replies)} replies, {identity.counts['token']} token request(s), "
          f"{identity.counts['metadata']} metadata and {identity.counts['keys']} JWKS fetch(es)")
    assert len(replies) >= 50
    assert {r.authorization for r in replies} == {f"Bearer {identity.issued[0]}"}
    assert identity.counts["token"] == 1
    assert (identity.counts["metadata"], identity.counts["keys"]) == (1, 1)


async def test_notify_sends_carry_the_token(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble,
) -> None:
    app = await start_ready(start_bot, auth_config(tmp_path, identity))
    chat = Chat(http, app, double, authorization=signed(identity))
    assert await chat.post(chat.activity("conversationUpdate")) == 200
    answer = await notify(http, app, {"to": {"conversations": [chat.conversation_id]}, "text": "Maintenance at 6"})
    await settle(app)
    [send] = double.find(op="send", conversation_id=chat.conversation_id)
    assert send.body["text"] == "Maintenance at 6"
    assert send.authorization == f"Bearer {identity.issued[-1]}"
    row = await app.outbox.get(answer["ids"][0])
    assert row is not None and row.status == "sent"


# ---- outbound: the identity service failing or hanging blocks nothing and loses nothing --------------------


async def _deliver_after_recovery(app: BotApplication, clock: FakeClock, double: ConnectorDouble,
                                  done: Callable[[], bool]) -> None:
    """Move the fake clock past the retry times until `done()`; each round is one pass of the worker."""
    for _ in range(20):
        if done():
            return
        clock.advance(61)
        await settle(app)
    assert done(), f"not delivered; connector saw {[(r.op, r.status) for r in double.requests]}"


async def test_a_hanging_token_service_blocks_no_turn_and_the_pending_reply_and_notification_go_later(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    identity.hold("token")  # the identity service accepts the connection and never answers (until released)
    app = await start_bot(auth_config(tmp_path, identity))
    await identity.wait_for(lambda i: i.held_count == 1)
    ada = Chat(http, app, double, authorization=signed(identity))
    bob = Chat(http, app, double, conversation_id="dm-bob", user_id="29:bob", authorization=signed(identity))

    assert await asyncio.wait_for(bob.post(bob.activity("conversationUpdate")), GUARD_S) == 200
    assert await asyncio.wait_for(ada.post(ada.activity("message", text="help")), GUARD_S) == 200
    async with http.get(bot_url(app, "/healthz?detail=1")) as response:
        assert response.status == 200
        assert (await response.json())["teams"] == {"authentication": "on", "token": "requesting", "signing_keys": 2}
    answer = await asyncio.wait_for(notify(http, app, {"to": {"conversations": ["dm-bob"]}, "text": "Heads up"}),
                                    GUARD_S)
    await settle(app)
    assert identity.held_count == 1, "all of the above answered while the token request hung"
    assert list(double.requests) == [], "nothing goes to Teams without a token"
    counts = await app.outbox.counts()
    assert counts.get("pending", 0) >= 2, counts  # ada's reply and bob's notification wait in the outbox
    row = await app.outbox.get(answer["ids"][0])
    assert row is not None and row.attempts == 0 and "token" in (row.last_error or "").lower()

    identity.release()
    await _deliver_after_recovery(app, fake_clock, double, lambda: bool(
        double.sent_activities("dm-ada") and double.sent_activities("dm-bob")))
    assert {r.authorization for r in double.requests} == {f"Bearer {t}" for t in identity.issued[:1]}
    assert double.sent_activities("dm-bob")[0]["text"] == "Heads up"
    assert ada.texts(), "the reply that waited for the token was delivered"


async def test_a_failing_token_service_keeps_rows_pending_without_using_up_attempts(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    identity.fail_next("token", 503, count=None)
    app = await start_bot(auth_config(tmp_path, identity))
    chats = [Chat(http, app, double, conversation_id=f"dm-{n}", user_id=f"29:u{n}", authorization=signed(identity))
             for n in range(5)]
    for chat in chats:
        assert await chat.post(chat.activity("conversationUpdate")) == 200
    ids = []
    for text in ("Later", "Even later"):
        ids += (await notify(http, app, {"to": {"all": True}, "text": text}))["ids"]
    for _ in range(10):  # more rounds than the worker's 6 attempts per message
        fake_clock.advance(61)
        await settle(app)
    rows = [await app.outbox.get(row_id) for row_id in ids]
    assert [(r.status, r.attempts) for r in rows if r is not None] == [("pending", 0)] * 10
    print(f"\ntoken service down for 10 retry rounds, 10 messages: {app.worker.counts['retried']} send retries, "
          f"{identity.counts['token']} token requests, every row still pending with 0 attempts used")
    assert app.worker.counts["retried"] >= 50, "every round, every message asked for a token"
    assert identity.counts["token"] <= 12, "token requests follow the backoff, not the send rate"
    assert list(double.requests) == []
    async with http.get(bot_url(app, "/healthz?detail=1")) as response:
        token_state = (await response.json())["teams"]["token"]
    assert token_state.startswith("unavailable") and "temporarily_unavailable" in token_state

    identity.clear_faults()
    await _deliver_after_recovery(app, fake_clock, double, lambda: len(double.sent_activities()) == 10)
    assert {r.authorization for r in double.find(op="send")} == {f"Bearer {identity.issued[-1]}"}
    assert {r.status for r in [await app.outbox.get(row_id) for row_id in ids] if r is not None} == {"sent"}


async def test_user_assigned_msi_gets_its_token_from_the_app_service_endpoint(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", identity.msi_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", identity.msi_header)
    config = auth_config(tmp_path, identity, app_type="UserAssignedMSI", app_password="", app_tenant_id="tenant-1")
    app = await start_ready(start_bot, config)
    chat = Chat(http, app, double, authorization=signed(identity))
    await chat.say("help")
    assert {r.authorization for r in double.find(op="reply")} == {f"Bearer {identity.issued[-1]}"}
    [msi] = identity.find("msi")
    assert msi.headers.get("X-IDENTITY-HEADER") == identity.msi_header
    assert (msi.query.get("resource"), msi.query.get("client_id")) == (SCOPE, APP_ID)
    assert identity.find("token") == []


# ---- signing keys: loaded off the turn path, refreshed in the background -----------------------------------


async def test_a_rolled_key_is_picked_up_in_the_background(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_ready(start_bot, auth_config(tmp_path, identity))
    keys = app.teams.signing_keys
    assert keys is not None and keys.loads == 1
    identity.rotate()
    chat = Chat(http, app, double, authorization=signed(identity, kid=ROLLED_KID))
    activity = chat.activity("message", text="help")
    assert await chat.post(activity) == 401, "an unknown key is refused at once"
    assert identity.counts["metadata"] == 1, "a refresh just happened: no new one yet"
    fake_clock.advance(301)
    assert await chat.post(chat.activity("message", text="help")) == 401  # asks for a refresh, does not wait
    await asyncio.wait_for(keys.wait_for_load(1), GUARD_S)
    await chat.say("help")
    assert double.find(op="reply")


async def test_a_hanging_metadata_endpoint_blocks_no_turn(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_ready(start_bot, auth_config(tmp_path, identity))
    identity.hold("metadata")
    fake_clock.advance(301)
    stranger = Chat(http, app, double, conversation_id="dm-x", authorization=signed(identity, kid=UNPUBLISHED_KID))
    assert await asyncio.wait_for(stranger.post(stranger.activity("message", text="hi")), GUARD_S) == 401
    await identity.wait_for(lambda i: i.held_count == 1)  # the refresh it asked for hangs
    chat = Chat(http, app, double, authorization=signed(identity))
    await asyncio.wait_for(chat.say("help"), GUARD_S)
    assert double.find(op="reply") and identity.held_count == 1


async def test_an_untrusted_certificate_is_refused(
    tmp_path: Path, start_bot: StartBot, http: aiohttp.ClientSession, identity: IdentityDouble,
    double: ConnectorDouble, caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the test CA in SSL_CERT_FILE / REQUESTS_CA_BUNDLE the bot trusts only the system store."""
    app = await start_bot(auth_config(tmp_path, identity, ca_files=()))
    chat = Chat(http, app, double, authorization=signed(identity))
    assert await chat.post(chat.activity("message", text="help")) == 401
    assert app.teams.signing_keys is not None and app.teams.signing_keys.loads == 0
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert identity.counts["keys"] == 0 and list(double.requests) == []
