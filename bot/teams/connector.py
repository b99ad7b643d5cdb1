"""Connector clients that share one aiohttp session.

The stock ConnectorClient sends through `requests` in the default thread pool (six threads on these
machines), so concurrent turns queue for a thread. These parts plug into the public seams of msrest
and the SDK (`ConnectorClient(sender=...)`, an `AsyncHTTPPolicy` as credentials) so every client sends
on the event loop over pooled connections. Tokens still come from the SDK's own credentials objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import requests
from botframework.connector import AsyncBfPipeline
from botframework.connector.aio import ConnectorClient
from msrest.pipeline import AsyncHTTPSender, Request, Response, SansIOHTTPPolicy
from msrest.universal_http.aiohttp import AioHttpClientResponse

USER_AGENT = "teams-proactive-bot/0.1 (BotBuilder Python 4.17)"


class SharedSession:
    """One aiohttp ClientSession for all connector traffic, opened lazily on the running loop."""

    def __init__(self, timeout_s: float = 30.0, max_connections: int = 200) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self.on_token: Callable[[bool], None] | None = None  # told of each token acquisition (metrics)

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class AiohttpSender(AsyncHTTPSender):
    """msrest pipeline sender over the shared aiohttp session."""

    def __init__(self, session: SharedSession) -> None:
        self._session = session

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
        raw = await self._session.get().request(
            http_request.method, http_request.url, headers=dict(http_request.headers), data=http_request.data
        )
        response = _LoadedResponse(http_request, raw)
        await response.load_body()
        return Response(request, response)


class _LoadedResponse(AioHttpClientResponse):
    """msrest's aiohttp response, except that an empty body (Teams' 202/204 answers) is a body too."""

    def body(self) -> bytes:
        return self._body or b""


class CredentialsPolicy(SansIOHTTPPolicy):
    """Adds the bot's Bearer token using the SDK credentials' own `signed_session` protocol.

    A SansIO policy on purpose: msrest links an AsyncHTTPPolicy credential into both the default and
    the custom pipeline, and the second link wins, routing sends back through `requests`. Token
    acquisition is synchronous, as in the stock SDK; MSAL caches the token, so only its hourly
    refresh reaches the network. Anonymous credentials (no app id, local Playground) add nothing.
    """

    def __init__(self, credentials: Any, on_token: Callable[[bool], None] | None = None) -> None:
        self._credentials = credentials
        self._signing = requests.Session()  # holds the header the credentials set
        self._anonymous = not getattr(credentials, "microsoft_app_id", None)
        self._on_token = on_token  # metrics: a new token (ok) or a failed acquisition; cache hits are not counted
        self._last_header: str | None = None

    def on_request(self, request: Request, **kwargs: Any) -> None:
        if self._anonymous:
            return
        try:
            self._credentials.signed_session(self._signing)
        except Exception:
            if self._on_token is not None:
                self._on_token(False)
            raise
        header = self._signing.headers.get("Authorization")
        if header and header != self._last_header and self._on_token is not None:
            self._last_header = str(header)
            self._on_token(True)
        if header:
            request.http_request.headers["Authorization"] = str(header)


def pooled_client(template: ConnectorClient, session: SharedSession,
                  on_token: Callable[[bool], None] | None = None) -> ConnectorClient:
    """A client for the same service URL and credentials as `template`, sending over `session`."""
    client = ConnectorClient(
        CredentialsPolicy(template.config.credentials, on_token),
        base_url=template.config.base_url,
        pipeline_type=AsyncBfPipeline,
        sender=AiohttpSender(session),
    )
    client.config.add_user_agent(USER_AGENT)
    return client
