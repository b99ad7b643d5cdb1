"""GET /metrics: this replica's Prometheus metrics, behind METRICS_TOKEN (Bearer).

Without the token it is open only where the config allows that: a loopback HOST, or ALLOW_OPEN_METRICS=true."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.metrics import CONTENT_TYPE, Metrics

from .guards import TokenGate


class MetricsEndpoint:
    def __init__(self, gate: TokenGate, metrics: Metrics, refresh: Callable[[], Awaitable[None]]) -> None:
        self._gate = gate
        self._metrics = metrics
        self._refresh = refresh  # fills the gauges read at scrape time (outbox, queues, dead jobs)

    async def get(self, request: web.Request) -> web.Response:
        refused = self._gate.refuse(request)
        if refused is not None:
            return refused
        await self._refresh()
        response = web.Response(body=self._metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response
