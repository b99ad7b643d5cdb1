"""POST /api/prices: a seller or feed pushes a price; the bot records it and evaluates its watches."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from scheduler.clock import Clock
from state.prices import Observation

from .http import error
from .price_sources import PriceBodyError, parse_price_push


class PricesEndpoint:
    def __init__(self, authorize: Callable[[web.Request], web.Response | None],
                 observe: Callable[[Observation], Awaitable[None]], clock: Clock) -> None:
        self._authorize = authorize
        self._observe = observe
        self._clock = clock

    async def post(self, request: web.Request) -> web.Response:
        refused = self._authorize(request)
        if refused is not None:
            return refused
        if request.content_type != "application/json":
            return error(415, "UnsupportedMediaType", "Content-Type must be application/json")
        try:
            body = json.loads(await request.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return error(400, "BadJson", f"body is not valid JSON: {exc}")
        try:
            quote = parse_price_push(body, self._clock)
        except PriceBodyError as exc:
            return web.json_response({"error": {"code": "BadRequest", "field": exc.field, "message": str(exc)}},
                                     status=400)
        await self._observe(Observation(quote.product, quote.price, quote.currency, quote.source, quote.url,
                                        quote.observed_at))
        return web.json_response({"accepted": True, "product": quote.product, "price": str(quote.price)},
                                 status=202)
