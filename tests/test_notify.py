"""POST /api/notify and GET /api/notify/{id} over HTTP, delivered through the outbox to the connector double."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


async def say_hello(http: aiohttp.ClientSession, app: BotApplication, double: ConnectorDouble, conversation: str,
                    user: str, kind: str = "personal") -> None:
    """An inbound conversationUpdate: the bot learns the conversation (and replies nothing)."""
    activity = {
        "type": "conversationUpdate", "id": f"cu-{conversation}", "channelId": "msteams", "serviceUrl": double.url,
        "conversation": {"id": conversation, "conversationType": kind},
        "from": {"id": user, "aadObjectId": f"aad-{user}", "name": user},
        "recipient": {"id": "28:bot", "name": "Bot"},
        "channelData": {"tenant": {"id": "t1"}},
    }
    async with http.post(bot_url(app), json=activity) as response:
        assert response.status == 200


async def notify(http: aiohttp.ClientSession, app: BotApplication, body: Any,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with http.post(bot_url(app, "/api/notify"), json=body, headers=AUTH if headers is None else headers) as r:
        return r.status, await r.json()


async def settle(app: BotApplication) -> None:
    await app.worker.idle()
    app.worker.pump()
    await app.worker.idle()
    await app.worker.flush()


async def test_disabled_without_a_token(start_bot: StartBot, http: aiohttp.ClientSession) -> None:
    app = await start_bot()
    status, body = await notify(http, app, {"to": {"all": True}, "text": "x"})
    assert status == 503 and "NOTIFY_TOKEN" in body["error"]["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}])
async def test_wrong_or_missing_token_is_401(start_bot: StartBot, http: aiohttp.ClientSession,
                                            headers: dict[str, str]) -> None:
    app = await start_bot(notify_token=TOKEN)
    status, _ = await notify(http, app, {"to": {"all": True}, "text": "x"}, headers=headers)
    assert status == 401
    async with http.get(bot_url(app, "/api/notify/1"), headers=headers) as response:
        assert response.status == 401


BAD_BODIES = [
    ([1], "body"),
    ({"text": "x"}, "to"),
    ({"to": {"all": True, "users": ["a"]}, "text": "x"}, "to"),
    ({"to": {"all": False}, "text": "x"}, "to.all"),
    ({"to": {"users": []}, "text": "x"}, "to.users"),
    ({"to": {"users": ["ok", 3]}, "text": "x"}, "to.users.1"),
    ({"to": {"users": ["x" * 1025]}, "text": "x"}, "to.users.0"),
    ({"to": None, "text": "x"}, "to"),
    ({"to": {}, "text": "x"}, "to"),
    ({"to": {"everyone": True}, "text": "x"}, "to.everyone"),
    ({"to": {"all": True}, "text": 5}, "text"),
    ({"to": {"all": True}, "text": ["x"]}, "text"),
    ({"to": {"all": True}, "card": "AdaptiveCard"}, "card"),
    # regression (issue #12): an unhashable priority was looked up in a dict and answered 500
    ({"to": {"all": True}, "text": "x", "priority": []}, "priority"),
    ({"to": {"all": True}, "text": "x", "priority": {}}, "priority"),
    ({"to": {"all": True}, "text": "x", "priority": 1}, "priority"),
    ({"to": {"all": True}, "text": "x", "expiresAt": 1893456000}, "expiresAt"),
    ({"to": {"all": True}, "text": "x", "dedupKey": ["k"]}, "dedupKey"),
    ({"to": {"all": True}, "text": "x", "dedupKey": "k" * 201}, "dedupKey"),
    ({"to": {"conversations": "c1"}, "text": "x"}, "to.conversations"),
    ({"to": {"all": True}}, "text"),
    ({"to": {"all": True}, "text": "  "}, "text"),
    ({"to": {"all": True}, "card": {"type": "HeroCard"}}, "card"),
    ({"to": {"all": True}, "text": "x" * 30_000}, "text"),
    ({"to": {"all": True}, "text": "x", "priority": "high"}, "priority"),
    ({"to": {"all": True}, "text": "x", "expiresAt": "tomorrow"}, "expiresAt"),
    ({"to": {"all": True}, "text": "x", "expiresAt": "2030-01-01T00:00:00"}, "expiresAt"),
    ({"to": {"all": True}, "text": "x", "expiresAt": "2001-01-01T00:00:00Z"}, "expiresAt"),
    ({"to": {"all": True}, "text": "x", "dedupKey": ""}, "dedupKey"),
    ({"to": {"all": True}, "text": "x", "expires_at": "2030-01-01T00:00:00Z"}, "expires_at"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_BODIES)])
async def test_invalid_bodies_name_the_field(start_bot: StartBot, http: aiohttp.ClientSession, body: Any,
                                             field: str) -> None:
    app = await start_bot(notify_token=TOKEN)
    status, payload = await notify(http, app, body)
    assert status == 400 and payload["error"]["field"] == field
    assert await app.outbox.counts() == {}, "a refused request queues nothing"


async def test_malformed_json_is_400(start_bot: StartBot, http: aiohttp.ClientSession) -> None:
    app = await start_bot(notify_token=TOKEN)
    async with http.post(bot_url(app, "/api/notify"), data=b"{nope", headers={**AUTH, "Content-Type":
                                                                              "application/json"}) as response:
        assert response.status == 400


async def test_users_are_reached_unknown_ones_reported(start_bot: StartBot, http: aiohttp.ClientSession,
                                                       double: ConnectorDouble) -> None:
    app = await start_bot(notify_token=TOKEN)
    await say_hello(http, app, double, "dm-ada", "29:ada")
    await say_hello(http, app, double, "group-1", "29:bob", kind="groupChat")
    status, body = await notify(http, app, {"to": {"users": ["29:ada", "aad-29:bob", "29:ghost"]},
                                            "text": "Price dropped"})
    assert status == 202 and body["queued"] == 2 and body["unknown"]["users"] == ["29:ghost"]
    await settle(app)
    assert [a["text"] for a in double.sent_activities("dm-ada")] == ["Price dropped"]
    [create] = double.find(op="create")
    assert create.body["members"] == [{"id": "29:bob"}], "1:1 chats are created with the Teams user id"
    for row_id in body["ids"]:
        async with http.get(bot_url(app, f"/api/notify/{row_id}"), headers=AUTH) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "sent"


async def test_all_conversations_and_dedup(start_bot: StartBot, http: aiohttp.ClientSession,
                                           double: ConnectorDouble) -> None:
    app = await start_bot(notify_token=TOKEN)
    for i in range(3):
        await say_hello(http, app, double, f"c{i}", f"29:u{i}")
    body = {"to": {"all": True}, "text": "Maintenance at 6pm", "dedupKey": "maint-1"}
    status, first = await notify(http, app, body)
    assert status == 202 and first["queued"] == 3
    status, again = await notify(http, app, body)
    assert status == 202 and again["queued"] == 0 and again["duplicates"] == 3 and again["ids"] == first["ids"]
    await settle(app)
    assert sorted(r.conversation_id or "" for r in double.find(op="send")) == ["c0", "c1", "c2"]


async def test_conversations_unknown_and_inactive_are_reported(start_bot: StartBot, http: aiohttp.ClientSession,
                                                               double: ConnectorDouble) -> None:
    app = await start_bot(notify_token=TOKEN)
    await say_hello(http, app, double, "c-on", "29:a")
    await say_hello(http, app, double, "c-off", "29:b")
    await app.references.mark_inactive("c-off", "uninstalled")
    status, body = await notify(http, app, {"to": {"conversations": ["c-on", "c-off", "c-x"]}, "text": "hi",
                                            "priority": "urgent"})
    assert status == 202 and body["queued"] == 1
    assert body["unknown"]["conversations"] == ["c-x"] and body["inactive"]["conversations"] == ["c-off"]


@pytest.mark.parametrize(("path", "status"), [
    ("999", 404), ("9223372036854775807", 404), ("abc", 400), ("0", 400), ("-1", 400), ("+1", 400), ("1.0", 400),
    ("%D9%A3", 400),  # an Arabic-Indic digit three: int() would take it
    ("99999999999999999999", 400),  # regression (issue #12): over SQLite's INTEGER range, answered 500
    ("9223372036854775808", 400),
])
async def test_status_of_unknown_or_malformed_id(start_bot: StartBot, http: aiohttp.ClientSession, path: str,
                                                 status: int) -> None:
    app = await start_bot(notify_token=TOKEN)
    async with http.get(bot_url(app, f"/api/notify/{path}"), headers=AUTH) as response:
        assert response.status == status, await response.text()
        assert (await response.json())["error"]["code"] == ("NotFound" if status == 404 else "BadRequest")


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"to": {"all": true}, "text": "\\ud800"}', "surrogate"),  # regression: SQLite cannot store it (500)
    (b"[" * 100_000 + b"]" * 100_000, "nested"),  # regression: RecursionError answered 500
    (b'{"to": {"all": true}, "text": "x", "n": ' + b"9" * 5000 + b"}", "JSON"),  # over int's digit limit: was 500
    (b"\xff\xfe{}", "UTF-8"),
])
async def test_hostile_json_is_400(start_bot: StartBot, http: aiohttp.ClientSession, raw: bytes,
                                   reason: str) -> None:
    app = await start_bot(notify_token=TOKEN)
    async with http.post(bot_url(app, "/api/notify"), data=raw,
                         headers={**AUTH, "Content-Type": "application/json"}) as response:
        body = await response.json()
        assert response.status == 400 and body["error"]["code"] == "BadJson" and reason in body["error"]["message"]
    assert await app.outbox.counts() == {}


async def test_paired_surrogates_are_fine(start_bot: StartBot, http: aiohttp.ClientSession,
                                          double: ConnectorDouble) -> None:
    app = await start_bot(notify_token=TOKEN)
    await say_hello(http, app, double, "c1", "29:a")
    async with http.post(bot_url(app, "/api/notify"), data=b'{"to": {"all": true}, "text": "\\ud83d\\ude00 up"}',
                         headers={**AUTH, "Content-Type": "application/json"}) as response:
        assert response.status == 202
    await settle(app)
    assert [a["text"] for a in double.sent_activities("c1")] == ["\U0001f600 up"]


async def test_healthz_shows_delivery_counts(start_bot: StartBot, http: aiohttp.ClientSession,
                                             double: ConnectorDouble) -> None:
    app = await start_bot(notify_token=TOKEN)
    await say_hello(http, app, double, "c1", "29:a")
    await notify(http, app, {"to": {"all": True}, "text": "x"})
    await settle(app)
    async with http.get(bot_url(app, "/healthz?detail=1")) as response:
        report = await response.json()
    assert report["delivery"]["sent"] == 1 and report["outbox"] == {"sent": 1}
