"""GET /metrics: this replica's Prometheus metrics, behind METRICS_TOKEN (Bearer) when it is set."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.metrics import CONTENT_TYPE, Metrics

from .errors import error


class MetricsEndpoint:
    def __init__(self, token: str, metrics: Metrics, refresh: Callable[[], Awaitable[None]]) -> None:
        self._token = token.encode()
        self._metrics = metrics
        self._refresh = refresh  # fills the gauges read at scrape time (outbox, queues, dead jobs)

    async def get(self, request: web.Request) -> web.Response:
        if self._token:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
                return error(401, "Unauthorized", "missing or wrong Bearer token (METRICS_TOKEN)",
                             **{"WWW-Authenticate": "Bearer"})
        await self._refresh()
        response = web.Response(body=self._metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response
