"""JSON bodies in, JSON errors out: the helpers every route shares.

Bad input gets a specific 4xx with a JSON body naming the problem, never a 500 or a stack trace.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from bot.metrics import Metrics
from state.availability import is_unavailable
from state.db import is_database_error

log = logging.getLogger(__name__)

METRICS = web.AppKey("metrics", Metrics)
SQLITE_MAX_INTEGER = 2**63 - 1  # the largest id a database row can have
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def field_error(field: str, message: str) -> web.Response:
    """400 naming the field of the request body that is wrong."""
    return web.json_response({"error": {"code": "BadRequest", "field": field, "message": message}}, status=400)


def describe(exc: ValidationError) -> tuple[str, str]:
    """(field, message) of the first problem pydantic found; the field as a dotted path ("body" for the root)."""
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        return field, "unknown field"
    return field, f"{field}: {first['msg'].removeprefix('Value error, ')}"


def validation_error(exc: ValidationError) -> web.Response:
    """400 naming the first field pydantic refused."""
    field, message = describe(exc)
    return field_error(field, message)


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no unpaired surrogates (they cannot be stored), bounded nesting; ValueError says why."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"body is not UTF-8: {exc}") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers over Python's digit limit
        raise ValueError(f"body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(raw) and not _encodable(value):
        raise ValueError("body contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _encodable(value: Any) -> bool:
    """True when every string in a parsed JSON value is valid Unicode (encodes as UTF-8)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


class JsonBody:
    """The parsed JSON body of a request, or the 4xx answer to give instead."""

    def __init__(self, value: Any = None, refusal: web.Response | None = None) -> None:
        self.value = value
        self.refusal = refusal

    @classmethod
    async def read(cls, request: web.Request) -> JsonBody:
        if request.content_type != "application/json":
            return cls(refusal=error(415, "UnsupportedMediaType", "Content-Type must be application/json"))
        try:  # a body over the app's client_max_size raises 413, which json_errors answers
            return cls(parse_json(await request.read()))
        except ValueError as exc:
            return cls(refusal=error(400, "BadJson", str(exc)))


def row_id(text: str, name: str = "id") -> int | None:
    """A database row id from a path segment: ASCII digits, 1..2^63-1; None when it is not one."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if 0 < value <= SQLITE_MAX_INTEGER else None


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
    except Exception as exc:
        if is_database_error(exc) and METRICS in request.app:
            request.app[METRICS].database_error("http")
        if is_unavailable(exc):  # nothing was done: the caller sends it again (the outage itself is logged once)
            log.debug("%s %s answered 503: the database is unavailable", request.method, request.path, exc_info=True)
            return error(503, "DatabaseUnavailable", "the bot's database is unavailable; try again shortly",
                         **{"Retry-After": "5"})
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "InternalError", "the bot failed to handle this request; see its log")
