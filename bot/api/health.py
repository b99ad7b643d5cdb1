"""GET /healthz: 200 with details when the database answers, 503 otherwise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

HealthReport = Callable[[], Awaitable[dict[str, Any]]]


def health_endpoint(report: HealthReport) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def healthz(request: web.Request) -> web.Response:
        details = await report()
        return web.json_response(details, status=200 if details.get("ok") else 503)

    return healthz
