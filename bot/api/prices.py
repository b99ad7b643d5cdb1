"""POST /api/prices: a seller or feed pushes a price; the bot records it and evaluates its watches."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.prices.sources import PriceBodyError, parse_price_push
from state.clock import Clock
from state.model import Observation

from .errors import JsonBody, field_error


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
        body = await JsonBody.read(request)
        if body.refusal is not None:
            return body.refusal
        try:
            quote = parse_price_push(body.value, self._clock)
        except PriceBodyError as exc:
            return field_error(exc.field, str(exc))
        await self._observe(quote)
        return web.json_response({"accepted": True, "product": quote.product, "price": str(quote.price)},
                                 status=202)
