"""GET /healthz (ready: 200 `{"status": "ok"}` when the database answers and delivery is not stuck, else 503
`{"status": "unavailable"}`) and GET /livez (alive: 200 while the process serves HTTP at all).

Probes are free and public, so they must be cheap: the check (one database round trip) runs at most once per
`max_age_s` whatever the probe rate, and concurrent probes share one run. The details (reasons, replica, tenants,
queue counts, identity state) are only for the operator and cost more (a count of the outbox):
`/healthz?detail=1` with the METRICS_TOKEN Bearer token (or without, where /metrics is open), cached the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from state.clock import Clock

from .errors import error
from .guards import TokenGate

HealthReport = Callable[[], Awaitable[dict[str, Any]]]
"""The full check: `ok` (bool), `reasons` (list of strings, when not ok) and whatever else helps the operator."""

MAX_AGE_S = 2.0


class CachedHealth:
    """`report()` at most once per `max_age_s` (the injected clock's monotonic time); one run at a time."""

    def __init__(self, report: HealthReport, clock: Clock, max_age_s: float = MAX_AGE_S) -> None:
        self._report = report
        self._clock = clock
        self._max_age = max_age_s
        self._last: tuple[float, dict[str, Any]] | None = None
        self._running: asyncio.Future[dict[str, Any]] | None = None

    async def current(self) -> dict[str, Any]:
        if self._last is not None and self._clock.monotonic() - self._last[0] < self._max_age:
            return self._last[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._running)  # a probe that hangs up does not cancel the others' check

    def forget(self) -> None:
        """Something the check reads changed (the database went or came back): the next probe checks again."""
        self._last = None

    async def _run(self) -> dict[str, Any]:
        try:
            started = self._clock.monotonic()
            report = await self._report()
            self._last = (started, report)
            return report
        finally:
            self._running = None


class HealthEndpoint:
    def __init__(self, health: CachedHealth, operators: TokenGate, details: CachedHealth | None = None) -> None:
        self._health = health
        self._details = details or health  # the operator's fuller check (queue counts)
        self._operators = operators  # who may see the details: the /metrics gate

    async def get(self, request: web.Request) -> web.Response:
        detail = request.query.get("detail", "0").lower()
        if detail not in ("0", "1", "false", "true"):
            return web.json_response({"error": {"code": "BadRequest", "field": "detail",
                                                "message": "detail must be 1 or 0"}}, status=400)
        wants_detail = detail in ("1", "true")
        if wants_detail and not self._operators.allows(request):
            return error(401, "Unauthorized", "the details need the Bearer token of /metrics (METRICS_TOKEN)",
                         **{"WWW-Authenticate": "Bearer"})
        report = await (self._details if wants_detail else self._health).current()
        status = "ok" if report.get("ok") else "unavailable"
        body = {"status": status, **report} if wants_detail else {"status": status}
        return web.json_response(body, status=200 if status == "ok" else 503)


async def livez(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})
