"""aiohttp routes. A thin translator: validate the request, hand the activity to the adapter.

Bad input gets a specific 4xx with a JSON body naming the problem, never a 500 or a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from botbuilder.core import Bot, serializer_helper
from botbuilder.integration.aiohttp import CloudAdapter
from botbuilder.schema import Activity
from botframework.connector.auth import BotFrameworkAuthentication

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


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


def field_error(field: str, message: str) -> web.Response:
    """400 naming the field of the request body that is wrong."""
    return web.json_response({"error": {"code": "BadRequest", "field": field, "message": message}}, status=400)


class MessagesEndpoint:
    """POST /api/messages: Teams (or the Playground) delivers activities here."""

    def __init__(self, adapter: CloudAdapter, authentication: BotFrameworkAuthentication, bot: Bot) -> None:
        self._adapter = adapter
        self._authentication = authentication
        self._bot = bot

    async def __call__(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return error(415, "UnsupportedMediaType", "Content-Type must be application/json")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return error(413, "PayloadTooLarge", f"activity body is over {MAX_BODY_BYTES} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error(413, "PayloadTooLarge", f"activity body is over {MAX_BODY_BYTES} bytes")
        try:
            body: Any = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return error(400, "BadJson", f"body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return error(400, "BadActivity", "body must be a JSON object (an activity)")
        if not isinstance(body.get("type"), str) or not body["type"]:
            return error(400, "BadActivity", "activity is missing 'type'")
        try:
            activity = Activity().deserialize(body)
        except Exception as exc:  # msrest raises several types for shape errors
            return error(400, "BadActivity", f"activity does not match the Bot Framework schema: {exc}")

        auth_header = request.headers.get("Authorization", "")
        try:
            auth = await self._authentication.authenticate_request(activity, auth_header)
        except Exception as exc:  # the SDK raises PermissionError, jwt errors, KeyError... all mean "not authorised"
            log.info("refused unauthenticated activity: %s", exc)
            return error(
                401, "Unauthorized", "missing or invalid Authorization header", **{"WWW-Authenticate": "Bearer"}
            )

        invoke_response = await self._adapter.process_activity(auth, activity, self._bot.on_turn)
        if invoke_response:
            body = invoke_response.body
            if not isinstance(body, dict | list | str | int | float | type(None)):
                body = serializer_helper(body)  # handlers usually hand over already-serialised bodies
            return web.json_response(body, status=invoke_response.status)
        return web.Response(status=200)


def health_endpoint(ping: Callable[[], Awaitable[dict[str, Any]]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /healthz: 200 with details when the database answers, 503 otherwise."""

    async def healthz(request: web.Request) -> web.Response:
        report = await ping()
        return web.json_response(report, status=200 if report.get("ok") else 503)

    return healthz


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


def build_web_app(
    messages: MessagesEndpoint, ping: Callable[[], Awaitable[dict[str, Any]]]
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app.router.add_post("/api/messages", messages)
    app.router.add_get("/healthz", health_endpoint(ping))
    return app
