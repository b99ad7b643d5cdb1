"""The aiohttp application: every route of the bot's HTTP API in one table."""

from __future__ import annotations

from aiohttp import web

from bot.metrics import Metrics

from .errors import METRICS, json_errors
from .guards import loopback_hosts_only
from .health import HealthEndpoint, livez
from .messages import MAX_BODY_BYTES, MessagesEndpoint
from .metrics import MetricsEndpoint
from .notices import NoticeEndpoints
from .notify import NotifyEndpoints
from .openapi import load_spec, openapi_endpoint
from .prices import PricesEndpoint


def build_web_app(
    messages: MessagesEndpoint, health: HealthEndpoint, notify: NotifyEndpoints, prices: PricesEndpoint,
    metrics: MetricsEndpoint, registry: Metrics, notices: NoticeEndpoints, *, local_mode: bool = False,
) -> web.Application:
    """`local_mode` (no MicrosoftAppId): only requests to a loopback Host name are answered."""
    middlewares = [loopback_hosts_only, json_errors] if local_mode else [json_errors]
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    app[METRICS] = registry
    app.router.add_post("/api/messages", messages)
    app.router.add_get("/healthz", health.get)
    app.router.add_get("/livez", livez)
    app.router.add_post("/api/notify", notify.post)
    app.router.add_get("/api/notify/{id}", notify.get)
    app.router.add_get("/api/notify/batches/{batchId}", notify.batch)
    app.router.add_get("/api/notify/batches/{batchId}/recipients", notices.recipients)
    app.router.add_delete("/api/notify/batches/{batchId}", notices.cancel)
    app.router.add_post("/api/notify/batches/{batchId}/recall", notices.recall)
    app.router.add_post("/api/prices", prices.post)
    app.router.add_get("/metrics", metrics.get)
    app.router.add_get("/openapi.json", openapi_endpoint(load_spec()))
    return app
