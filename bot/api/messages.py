"""POST /api/messages: Teams (or the Playground) delivers activities here.

A thin translator in the spirit of bolt-python's aiohttp adapter: check the HTTP envelope (content type,
size, a JSON object with a `type`), then hand the raw activity and the Authorization header to a
`TurnProcessor` (the Bot Framework side, bot/teams/turns.py), which authenticates and runs the turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from .errors import error

MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class TurnAnswer:
    """What to answer Teams: a status and, for invokes, a JSON body."""

    status: int = 200
    body: Any = None
    has_body: bool = False


class TurnRefused(Exception):
    """The activity is not processed: `status` 400 (not a valid activity) or 401 (not authenticated)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class TurnProcessor(Protocol):
    """Runs one inbound activity; raises TurnRefused for input it will not process."""

    async def process(self, body: dict[str, Any], auth_header: str) -> TurnAnswer: ...


class MessagesEndpoint:
    def __init__(self, turns: TurnProcessor) -> None:
        self._turns = turns

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
            answer = await self._turns.process(body, request.headers.get("Authorization", ""))
        except TurnRefused as refused:
            headers = {"WWW-Authenticate": "Bearer"} if refused.status == 401 else {}
            return error(refused.status, refused.code, refused.message, **headers)
        if answer.has_body:
            return web.json_response(answer.body, status=answer.status)
        return web.Response(status=answer.status)
