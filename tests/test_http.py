"""The HTTP surface refuses bad input with a specific 4xx and never a 500 (the stock SDK answers 500).

With an app id, requests without a valid channel token get 401: see test_auth.py."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import aiohttp
import pytest

from scheduler.clock import FakeClock
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


async def test_healthz_reports_database(start_bot: StartBot, http: aiohttp.ClientSession) -> None:
    app = await start_bot()
    async with http.get(bot_url(app, "/healthz")) as response:
        assert response.status == 200
        assert (await response.json())["database"] == "ok"
    await app.db.close()
    async with http.get(bot_url(app, "/healthz")) as response:
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
        async with http.get(bot_url(app, "/healthz")) as response:
            body = await response.json()
            assert response.status == 503 and body["ok"] is False
            assert "unwritten for 31 s" in body["reasons"][0] and "database is locked" in body["reasons"][0]
        async with http.get(bot_url(app, "/livez")) as response:
            assert response.status == 200
        app.outbox.apply = real_apply  # type: ignore[method-assign]
        assert await worker.flush() is True
        async with http.get(bot_url(app, "/healthz")) as response:
            assert response.status == 200
        assert [r.status for r in await app.outbox.get_many([1])] == ["sent"]
