"""The HTTP surface refuses bad input with a specific 4xx and never a 500 (the stock SDK answers 500).

With an app id, requests without a valid channel token get 401: see test_auth.py."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import aiohttp
import pytest

from state.clock import FakeClock
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble

ACTIVITY = {
    "type": "message",
    "id": "a1",
    "text": "help",
    "channelId": "msteams",
    "serviceUrl": "http://127.0.0.1:9/",
    "conversation": {"id": "c1", "conversationType": "personal"},
    "from": {"id": "29:u1", "name": "Ada"},
    "recipient": {"id": "28:bot", "name": "Price Watch"},
}

BAD_REQUESTS: list[tuple[str, dict[str, str], bytes, int, str]] = [
    ("malformed JSON", {"Content-Type": "application/json"}, b"{bad", 400, "BadJson"),
    ("not UTF-8", {"Content-Type": "application/json"}, b"\xff\xfe", 400, "BadJson"),
    ("JSON array", {"Content-Type": "application/json"}, b"[1, 2]", 400, "BadActivity"),
    ("missing type", {"Content-Type": "application/json"}, b'{"text": "hi"}', 400, "BadActivity"),
    ("empty type", {"Content-Type": "application/json"}, b'{"type": ""}', 400, "BadActivity"),
    ("text/plain", {"Content-Type": "text/plain"}, json.dumps(ACTIVITY).encode(), 415, "UnsupportedMediaType"),
    ("no content type", {}, json.dumps(ACTIVITY).encode(), 415, "UnsupportedMediaType"),
    ("over 256 KiB", {"Content-Type": "application/json"}, b'{"type":"message","text":"' + b"x" * 262_200 + b'"}',
     413, "PayloadTooLarge"),
    ("garbage bearer", {"Content-Type": "application/json", "Authorization": "Bearer garbage"},
     json.dumps(ACTIVITY).encode(), 401, "Unauthorized"),
    ("not a bearer", {"Content-Type": "application/json", "Authorization": "Basic Zm9vOmJhcg=="},
     json.dumps(ACTIVITY).encode(), 401, "Unauthorized"),
]


@pytest.mark.parametrize(("name", "headers", "body", "status", "code"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
async def test_bad_input_gets_a_specific_error(
    start_bot: StartBot, http: aiohttp.ClientSession, name: str, headers: dict[str, str], body: bytes,
    status: int, code: str,
) -> None:
    app = await start_bot()
    async with http.post(bot_url(app), data=body, headers=headers) as response:
        payload: dict[str, Any] = await response.json()
        assert response.status == status, payload
        assert payload["error"]["code"] == code
        assert "Traceback" not in json.dumps(payload)
    if status == 401:
        assert response.headers.get("WWW-Authenticate") == "Bearer"


async def test_chunked_body_over_limit_is_413(start_bot: StartBot, http: aiohttp.ClientSession) -> None:
    app = await start_bot()

    async def chunks() -> Any:
        yield b'{"type":"message","text":"'
        for _ in range(300):
            yield b"x" * 1024
        yield b'"}'

    async with http.post(bot_url(app), data=chunks(), headers={"Content-Type": "application/json"}) as response:
        assert response.status == 413


async def test_unknown_route_and_wrong_method_answer_json(start_bot: StartBot, http: aiohttp.ClientSession) -> None:
    app = await start_bot()
    async with http.get(bot_url(app, "/nope")) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "NotFound"
    async with http.get(bot_url(app)) as response:
        assert response.status == 405


async def test_healthz_reports_database(start_bot: StartBot, http: aiohttp.ClientSession,
                                       fake_clock: FakeClock) -> None:
    app = await start_bot()
    async with http.get(bot_url(app, "/healthz?detail=1")) as response:
        assert response.status == 200
        assert (await response.json())["database"] == "ok"
    await app.db.close()
    fake_clock.advance(2)  # the check is cached for 2 s
    async with http.get(bot_url(app, "/healthz?detail=1")) as response:
        assert response.status == 503
        assert (await response.json())["database"] == "unavailable"


async def test_healthz_is_503_with_the_reason_while_delivery_is_stuck_and_livez_stays_200(
    start_bot: StartBot, http: aiohttp.ClientSession, fake_clock: FakeClock
) -> None:
    async with ConnectorDouble() as double:
        app = await start_bot()
        chat = Chat(http, app, double)
        real_apply = app.outbox.apply

        async def locked(outcomes: object) -> None:
            raise sqlite3.OperationalError("database is locked")

        app.outbox.apply = locked  # type: ignore[method-assign]
        await chat.install()  # the welcome is sent; its outcome cannot be written
        worker = app.worker
        worker.pump()
        await worker.idle()
        assert await worker.flush() is False
        fake_clock.advance(31)
        async with http.get(bot_url(app, "/healthz?detail=1")) as response:
            body = await response.json()
            assert response.status == 503 and body["ok"] is False
            assert "unwritten for 31 s" in body["reasons"][0] and "database is locked" in body["reasons"][0]
        async with http.get(bot_url(app, "/livez")) as response:
            assert response.status == 200
        app.outbox.apply = real_apply  # type: ignore[method-assign]
        assert await worker.flush() is True
        fake_clock.advance(2)
        async with http.get(bot_url(app, "/healthz")) as response:
            assert response.status == 200
        assert [r.status for r in await app.outbox.get_many([1])] == ["sent"]
@pytest.mark.parametrize("service_url", [
    "not a url",  # regression (issue #12): recorded and replied to
    "ftp://127.0.0.1/", "http://", "https://user:secret@127.0.0.1/", "http://127.0.0.1:99999/",
    "javascript:alert(1)", "http://exa mple.com/", "https://пример.рф/", 5, None,
])
async def test_an_activity_with_a_bad_service_url_is_refused_and_not_recorded(
    start_bot: StartBot, http: aiohttp.ClientSession, service_url: Any,
) -> None:
    app = await start_bot()
    async with http.post(bot_url(app), json={**ACTIVITY, "serviceUrl": service_url}) as response:
        body = await response.json()
        assert response.status == 400 and body["error"]["field"] == "serviceUrl", body
    assert await app.references.get("c1") is None, "a refused activity must not be recorded"


@pytest.mark.parametrize(("patch", "field"), [
    ({"conversation": None}, "conversation"),
    ({"conversation": {"id": 7}}, "conversation.id"),
    ({"conversation": {"id": ""}}, "conversation.id"),
    ({"from": ["29:u1"]}, "from"),
    ({"from": {"name": "no id"}}, "from.id"),
    ({"text": {"x": 1}}, "text"),
    ({"channelData": "teams"}, "channelData"),
    ({"channelData": {"tenant": {"id": 5}}}, "channelData.tenant.id"),
    ({"membersAdded": [{"id": None}]}, "membersAdded.0.id"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"type": 3}, "type"),
])
async def test_wrongly_typed_fields_are_named(start_bot: StartBot, http: aiohttp.ClientSession,
                                              patch: dict[str, Any], field: str) -> None:
    app = await start_bot()
    async with http.post(bot_url(app), json={**ACTIVITY, **patch}) as response:
        body = await response.json()
        assert response.status == 400 and body["error"] == {
            "code": "BadActivity", "field": field, "message": body["error"]["message"]}, body
        assert field in body["error"]["message"]


@pytest.mark.parametrize("raw", [
    b'{"type": "message", "text": "\\ud800"}',  # an unpaired surrogate cannot be stored
    b'{"type": "message", "n": NaN}', b'{"type": "message", "n": Infinity}',  # not JSON, though Python reads them
    b"[" * 50_000 + b"]" * 50_000,
])
async def test_json_that_is_not_strict_json_is_refused(start_bot: StartBot, http: aiohttp.ClientSession,
                                                       raw: bytes) -> None:
    app = await start_bot()
    async with http.post(bot_url(app), data=raw, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400 and (await response.json())["error"]["code"] == "BadJson"


def card_action(value: Any) -> dict[str, Any]:
    return {**ACTIVITY, "type": "invoke", "name": "adaptiveCard/action", "value": value}


@pytest.mark.parametrize(("value", "code"), [
    (None, "BadRequest"), ("execute", "BadRequest"), ([1], "BadRequest"), ({}, "BadRequest"),
    ({"action": "Action.Execute"}, "BadRequest"),  # regression (issue #12): the SDK's reply could not be serialised
    ({"action": ["Action.Execute"]}, "BadRequest"),
    ({"action": {"type": "Action.Submit"}}, "NotSupported"),
    ({"action": {"type": None}}, "NotSupported"),
    ({"action": {"type": "Action.Execute", "verb": 5}}, "BadRequest"),
])
async def test_malformed_universal_actions_get_400_with_an_error_body(
    start_bot: StartBot, http: aiohttp.ClientSession, value: Any, code: str,
) -> None:
    app = await start_bot()
    async with http.post(bot_url(app), json=card_action(value)) as response:
        body = await response.json()
        assert response.status == 400, body
    assert body["statusCode"] == 400 and body["type"] == "application/vnd.microsoft.error"
    assert body["value"]["code"] == code and isinstance(body["value"]["message"], str)


async def test_a_well_formed_universal_action_is_answered_with_a_card(start_bot: StartBot,
                                                                     http: aiohttp.ClientSession) -> None:
    app = await start_bot()
    async with http.post(bot_url(app), json=card_action({"action": {"type": "Action.Execute", "verb": "x",
                                                                    "data": {"anything": 1}}})) as response:
        assert response.status == 200
        assert (await response.json())["statusCode"] == 200


@pytest.mark.parametrize("watch_id", [99999999999999999999, "99999999999999999999", "٣", True, 1.5, -1, None])
async def test_alert_buttons_with_hostile_watch_ids_answer(start_bot: StartBot, http: aiohttp.ClientSession,
                                                           watch_id: Any) -> None:
    """Regression: a watch id over SQLite's integer range failed the turn (OverflowError)."""
    app = await start_bot()
    data = {"command": "alert", "action": "stop", "watchId": watch_id, "product": "gadget"}
    async with http.post(bot_url(app), json=card_action({"action": {"type": "Action.Execute", "data": data}})) as r:
        body = await r.json()
        assert r.status == 200 and body["statusCode"] == 200, body
        assert "out of date" in json.dumps(body["value"])


@pytest.mark.parametrize(("name", "value", "status"), [
    ("composeExtension/query", None, 501),  # nobody handles it: the protocol's NotImplemented, no body
    ("someone/elses", {"x": 1}, 501),
    ("fileConsent/invoke", {}, 400),  # the SDK's default failed on it (AttributeError): a malformed value
    ("fileConsent/invoke", [1, 2], 400),
])
async def test_other_invokes_answer_as_the_protocol_says(start_bot: StartBot, http: aiohttp.ClientSession,
                                                         name: str, value: Any, status: int) -> None:
    app = await start_bot()
    async with http.post(bot_url(app), json={**ACTIVITY, "type": "invoke", "name": name, "value": value}) as r:
        assert r.status == status, await r.text()
        if status == 501:
            assert await r.read() == b""


async def test_teams_shaped_activity_is_accepted(start_bot: StartBot, http: aiohttp.ClientSession) -> None:
    """The envelope checks accept what Teams really sends: 7-digit fractions, extra fields everywhere."""
    app = await start_bot()
    activity = {**ACTIVITY, "timestamp": "2021-04-05T18:37:29.2436011Z",
                "localTimestamp": "2021-04-05T11:37:29.2436011-07:00", "localTimezone": "America/Los_Angeles",
                "from": {"id": "29:u1", "name": "Ada", "aadObjectId": "aad-1", "role": "user"},
                "conversation": {"id": "c1", "conversationType": "personal", "tenantId": "t1", "isGroup": False},
                "channelData": {"tenant": {"id": "t1"}, "notification": {"alert": True}, "source": {"name": "x"}},
                "entities": [{"type": "clientInfo", "locale": "en-US"}], "textFormat": "plain", "locale": "en-US"}
    async with http.post(bot_url(app), json=activity) as response:
        assert response.status == 200, await response.text()
    record = await app.references.get("c1")
    assert record is not None and record.tenant_id == "t1"
