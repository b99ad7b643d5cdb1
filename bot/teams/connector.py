"""Calls to the Bot Connector with the bot's token, over connections shared by the whole process.

`JsonConnector` makes the calls on the hot paths (a turn's replies, proactive send / update, opening a
1:1 chat) as plain JSON over keep-alive HTTP/1.1 connections (`http1.ConnectionPool`, which costs a third of
an aiohttp request's CPU): the activity dict goes out as it is, the answer comes back as a dict, errors
as `ConnectorError` with Teams' status, code and Retry-After. Building msrest models for them cost more
CPU than everything else in a turn (see docs/architecture.md, "Turn cost and send cost").

The SDK's ConnectorClient still serves the rest (rosters, the SDK's own update/delete in a turn) over the
shared aiohttp session. The stock one sends through `requests` in the default thread pool and fetches tokens
synchronously on the event loop; `pooled_client` plugs into the public seams of msrest and the SDK
(`ConnectorClient(sender=...)`) so it too sends on the event loop over pooled connections, with a Bearer token
obtained asynchronously (`tokens.py`). The same session (and its TLS trust, `bot/tls.py`, which the keep-alive
connections share) serves the identity service and the channel's signing keys.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from botframework.connector import AsyncBfPipeline
from botframework.connector.aio import ConnectorClient
from msrest.pipeline import AsyncHTTPSender, Request, Response, SansIOHTTPPolicy
from msrest.universal_http.aiohttp import AioHttpClientResponse

from bot.proxy import ProxySettings

from .http1 import ConnectionPool

USER_AGENT = "teams-proactive-bot/0.1 (BotBuilder Python 4.17)"
_HEADERS = {"Accept": "application/json", "Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}


class BearerTokens(Protocol):
    """Where the connectors get the bot's token for a service URL (credentials.ConnectorCredentials): only for
    allowed URLs, renewed once after a 401, and told how Teams answered."""

    async def token_for(self, service_url: str) -> str: ...

    async def renewed(self, stale: str) -> str: ...

    def answered(self, *, refused: bool, detail: str = "") -> float: ...

    def unanswered(self) -> None: ...


class SharedSession:
    """One aiohttp ClientSession for outbound traffic, and the Bot Connector's keep-alive connections
    (`connections()`), both opened lazily on the running loop with the same TLS trust."""

    def __init__(self, timeout_s: float = 30.0, max_connections: int = 200,
                 ssl_context: ssl.SSLContext | None = None, proxies: ProxySettings | None = None) -> None:
        self.proxies = proxies or ProxySettings()  # every request through the session passes `proxy_for(url)`
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._ssl_context = ssl_context
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None
        self._pool: ConnectionPool | None = None

    def connections(self) -> ConnectionPool:
        if self._pool is None:
            self._pool = ConnectionPool(self._ssl_context, max_connections=self._max_connections,
                                        proxies=self.proxies)
        return self._pool

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections,
                                               ssl=self._ssl),
            )
        return self._session

    def proxy_for(self, url: str) -> dict[str, Any]:
        """The aiohttp keyword arguments that send a request to `url` through the organisation's proxy (if any)."""
        return self.proxies.aiohttp_kwargs(url)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
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
        session = self._session.get()
        if self._tokens is None:
            raw = await session.request(http_request.method, http_request.url, headers=headers, data=http_request.data,
                                        **self._session.proxy_for(http_request.url))
        else:
            tokens, answered = self._tokens, False
            token = await tokens.token_for(http_request.url)
            try:
                headers["Authorization"] = f"Bearer {token}"
                raw = await session.request(http_request.method, http_request.url, headers=headers,
                                            data=http_request.data, **self._session.proxy_for(http_request.url))
                if raw.status == 401:  # drop the cached token, fetch a fresh one, try once more
                    raw.release()
                    headers["Authorization"] = f"Bearer {await tokens.renewed(token)}"
                    raw = await session.request(http_request.method, http_request.url, headers=headers,
                                                data=http_request.data, **self._session.proxy_for(http_request.url))
                answered = True
                tokens.answered(refused=raw.status == 401, detail=raw.reason or "")
            finally:
                if not answered:
                    tokens.unanswered()
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


class ConnectorError(Exception):
    """The Bot Connector answered with an error status (Teams' error body: `{"error": {"code", "message"}}`)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class CredentialsRefused(ConnectorError):
    """Teams answered 401 to the bot's token twice, the second time to a freshly fetched one: sending is paused
    for `retry_after` seconds (credentials.ConnectorCredentials), nothing is dropped."""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class JsonConnector:
    """The Bot Connector's v3 REST calls as plain JSON over keep-alive connections (no msrest models).

    Same requests as the SDK's ConnectorClient: `{serviceUrl}/v3/conversations/{id}/activities[/{activityId}]`
    with the ids URL-quoted, `x-ms-conversation-id`, and the bot's Bearer token when it has credentials."""

    def __init__(self, session: SharedSession, tokens: BearerTokens | None = None, *, timeout_s: float = 20.0) -> None:
        self._session = session
        self._tokens = tokens
        self._timeout = timeout_s  # TimeoutError after it (the token wait included): the caller retries

    async def send(self, service_url: str, conversation_id: str, activity: dict[str, Any],
                   reply_to_id: str | None = None) -> dict[str, Any]:
        """Post an activity (as a reply to `reply_to_id` when given); Teams' answer (`{"id": …}`), or {}."""
        path = f"v3/conversations/{quote(conversation_id, safe='')}/activities"
        if reply_to_id:
            path += f"/{quote(reply_to_id, safe='')}"
        return await self._call("POST", service_url, path, activity, conversation_id)

    async def update(self, service_url: str, conversation_id: str, activity_id: str,
                     activity: dict[str, Any]) -> dict[str, Any]:
        path = f"v3/conversations/{quote(conversation_id, safe='')}/activities/{quote(activity_id, safe='')}"
        return await self._call("PUT", service_url, path, activity, conversation_id)

    async def delete(self, service_url: str, conversation_id: str, activity_id: str) -> None:
        path = f"v3/conversations/{quote(conversation_id, safe='')}/activities/{quote(activity_id, safe='')}"
        await self._call("DELETE", service_url, path, None, conversation_id)

    async def create_conversation(self, service_url: str, parameters: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", service_url, "v3/conversations", parameters, None)

    async def _call(self, method: str, service_url: str, path: str, body: dict[str, Any] | None,
                    conversation_id: str | None) -> dict[str, Any]:
        headers = _HEADERS.copy()
        if conversation_id is not None:
            headers["x-ms-conversation-id"] = conversation_id
        data = b"" if body is None else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        pool, tokens, paused = self._session.connections(), self._tokens, 0.0
        async with asyncio.timeout(self._timeout):
            if tokens is None:
                response = await pool.request(method, service_url, path, headers, data)
            else:
                token, answered = await tokens.token_for(service_url), False
                try:
                    headers["Authorization"] = f"Bearer {token}"
                    response = await pool.request(method, service_url, path, headers, data)
                    if response.status == 401:  # drop the cached token, fetch a fresh one, try once more
                        headers["Authorization"] = f"Bearer {await tokens.renewed(token)}"
                        response = await pool.request(method, service_url, path, headers, data)
                    answered = True
                    refused = response.status == 401
                    paused = tokens.answered(refused=refused, detail=_detail(response.body) if refused else "")
                finally:
                    if not answered:
                        tokens.unanswered()
        raw = response.body
        if response.status >= 300:
            error = _error(response.status, response.reason, raw, response.headers.get("retry-after"))
            if tokens is not None and response.status == 401:
                raise CredentialsRefused(401, error.code, error.message, paused)
            raise error
        if not raw:
            return {}
        try:
            answer = json.loads(raw)
        except ValueError:  # accepted, but an answer we cannot read: the message went out all the same
            return {}
        return answer if isinstance(answer, dict) else {}


def _detail(raw: bytes) -> str:
    """Teams' error code and message from an error body, for a log line."""
    error = _error(401, None, raw, None)
    return f"{error.code}: {error.message}"


def _error(status: int, reason: str | None, raw: bytes, retry_after: str | None) -> ConnectorError:
    code = message = None
    try:
        error = json.loads(raw).get("error") if raw else None
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    return ConnectorError(status, str(code or f"HTTP{status}"),
                          str(message or f"Operation returned an invalid status code {reason!r}"),
                          _retry_after(retry_after))
