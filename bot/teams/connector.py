"""Connector clients that share one aiohttp session, and carry the bot's token.

The stock ConnectorClient sends through `requests` in the default thread pool (six threads on these
machines), so concurrent turns queue for a thread, and its credentials fetch tokens synchronously on the
event loop. These parts plug into the public seams of msrest and the SDK (`ConnectorClient(sender=...)`)
so every client sends on the event loop over pooled connections, with a Bearer token obtained
asynchronously (`tokens.py`). The same session (and its TLS trust, `bot/tls.py`) serves the identity
service and the channel's signing keys.
"""

from __future__ import annotations

import ssl
from typing import Any, Protocol

import aiohttp
from botframework.connector import AsyncBfPipeline
from botframework.connector.aio import ConnectorClient
from msrest.pipeline import AsyncHTTPSender, Request, Response, SansIOHTTPPolicy
from msrest.universal_http.aiohttp import AioHttpClientResponse

USER_AGENT = "teams-proactive-bot/0.1 (BotBuilder Python 4.17)"


class BearerTokens(Protocol):
    """Where the sender gets the bot's token (tokens.ChannelTokens)."""

    async def token(self) -> str: ...


class SharedSession:
    """One aiohttp ClientSession for all outbound traffic, opened lazily on the running loop."""

    def __init__(self, timeout_s: float = 30.0, max_connections: int = 200,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections,
                                               ssl=self._ssl),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class AiohttpSender(AsyncHTTPSender):
    """msrest pipeline sender over the shared aiohttp session; adds the bot's Bearer token when it has one.

    The token is awaited here, not in a credentials policy: msrest's policies are synchronous, and an
    AsyncHTTPPolicy credential gets linked into msrest's default pipeline too, which sends via `requests`.
    Without tokens (no app id: local Playground) requests go unauthenticated."""

    def __init__(self, session: SharedSession, tokens: BearerTokens | None = None) -> None:
        self._session = session
        self._tokens = tokens

    async def __aenter__(self) -> AiohttpSender:
        return self

    async def __aexit__(self, *exc_details: Any) -> None:
        return None

    def build_context(self) -> Any:
        return None

    async def send(self, request: Request, **config: Any) -> Response:
        http_request = request.http_request
        if http_request.files:
            raise NotImplementedError("multipart uploads are not used by this bot")
        headers = dict(http_request.headers)
        if self._tokens is not None:
            headers["Authorization"] = f"Bearer {await self._tokens.token()}"
        raw = await self._session.get().request(
            http_request.method, http_request.url, headers=headers, data=http_request.data
        )
        response = _LoadedResponse(http_request, raw)
        await response.load_body()
        return Response(request, response)


class _LoadedResponse(AioHttpClientResponse):
    """msrest's aiohttp response, except that an empty body (Teams' 202/204 answers) is a body too."""

    def body(self) -> bytes:
        return self._body or b""


_NO_CREDENTIALS: SansIOHTTPPolicy[Any, Any] = SansIOHTTPPolicy()  # msrest wants credentials; the sender adds the token


def pooled_client(service_url: str, session: SharedSession, tokens: BearerTokens | None) -> ConnectorClient:
    """A client for `service_url` sending over `session`, with the bot's token from `tokens` (if any)."""
    client = ConnectorClient(
        _NO_CREDENTIALS,
        base_url=service_url,
        pipeline_type=AsyncBfPipeline,
        sender=AiohttpSender(session, tokens),
    )
    client.config.add_user_agent(USER_AGENT)
    return client
