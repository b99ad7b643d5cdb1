"""Pooled connector clients send on the event loop (not through `requests`) and carry the bot's token.

The token source here is the smallest thing with the connectors' `BearerTokens` calls; the real one
(credentials.ConnectorCredentials over tokens.ChannelTokens with azure-identity) is tested against the identity
double in test_tokens.py, test_auth.py and test_credentials.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from botbuilder.schema import Activity

from bot.teams.connector import SharedSession, pooled_client
from tests.connector_double import ConnectorDouble


class FixedToken:
    async def token_for(self, service_url: str) -> str:
        return "token-123"

    async def renewed(self, stale: str) -> str:
        return "token-123"

    def answered(self, *, refused: bool, detail: str = "") -> float:
        return 0.0

    def unanswered(self) -> None:
        pass


def _no_requests(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("connector traffic must not go through requests")


@pytest.mark.parametrize(("tokens", "expected"), [(None, None), (FixedToken(), "Bearer token-123")])
async def test_pooled_client_sends_over_aiohttp_with_the_bots_token(
    monkeypatch: pytest.MonkeyPatch, tokens: FixedToken | None, expected: str | None
) -> None:
    monkeypatch.setattr(requests.Session, "send", _no_requests)
    session = SharedSession()
    async with ConnectorDouble() as double:
        client = pooled_client(double.url, session, tokens)
        response = await client.conversations.send_to_conversation("c1", Activity(type="message", text="hi"))
        assert response.id
        [request] = double.find(op="send")
        assert request.body["text"] == "hi"
        assert request.authorization == expected
        assert "teams-proactive-bot" in request.headers.get("User-Agent", "")
    await session.close()


async def test_an_empty_connector_answer_is_not_an_error() -> None:
    """Teams (and the Playground) may answer a send with 202 and no body."""
    from aiohttp import web

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/v3/conversations/{cid}/activities", empty)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = SharedSession()
    try:
        client = pooled_client(f"http://127.0.0.1:{port}/", session, None)
        response = await client.conversations.send_to_conversation("c1", Activity(type="message", text="hi"))
        assert response is None or not getattr(response, "id", None)
    finally:
        await session.close()
        await runner.cleanup()
