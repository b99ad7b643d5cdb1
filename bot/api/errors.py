"""JSON bodies in, JSON errors out: the helpers every route shares.

Bad input gets a specific 4xx with a JSON body naming the problem, never a 500 or a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def field_error(field: str, message: str) -> web.Response:
    """400 naming the field of the request body that is wrong."""
    return web.json_response({"error": {"code": "BadRequest", "field": field, "message": message}}, status=400)


class JsonBody:
    """The parsed JSON body of a request, or the 4xx answer to give instead."""

    def __init__(self, value: Any = None, refusal: web.Response | None = None) -> None:
        self.value = value
        self.refusal = refusal

    @classmethod
    async def read(cls, request: web.Request) -> JsonBody:
        if request.content_type != "application/json":
            return cls(refusal=error(415, "UnsupportedMediaType", "Content-Type must be application/json"))
        try:
            return cls(json.loads(await request.read()))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return cls(refusal=error(400, "BadJson", f"body is not valid JSON: {exc}"))


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Unknown routes and wrong methods answer JSON; an unexpected failure answers 500 without internals."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason.replace(" ", ""), exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "InternalError", "the bot failed to handle this request; see its log")
