"""GET /healthz (ready: 200 when the database answers and delivery is not stuck, else 503 with the reasons)
and GET /livez (alive: 200 while the process serves HTTP at all, whatever its dependencies say)."""

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


async def livez(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})
