"""The Bot Framework side of POST /api/messages: read the activity, authenticate it, run the turn.

Implements `bot.api.messages.TurnProcessor` with the SDK's CloudAdapter, so the HTTP route never
touches botbuilder types.
"""

from __future__ import annotations

import logging
from typing import Any

from botbuilder.core import Bot, serializer_helper
from botbuilder.integration.aiohttp import CloudAdapter
from botbuilder.schema import Activity
from botframework.connector.auth import BotFrameworkAuthentication

from bot.api.messages import TurnAnswer, TurnRefused
from bot.logs import log_context

from .activities import tenant_of
from .wire import from_json

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
"""Retry-After of a turn answered 503 because the database was away: when Teams may send it again."""
CARD_ERROR = "application/vnd.microsoft.error"


class DatabaseAway(Exception):
    """The turn could not be processed because the database is unavailable (raised by the turn error handler,
    so it leaves the adapter instead of becoming an apology)."""


def not_processed(activity_type: str | None) -> TurnAnswer:
    """503 with Retry-After: nothing of the turn is taken as done, so the channel sends it again. An invoke (a
    card button, which Teams does not re-send) gets the Universal Actions error answer the card shows."""
    message = "The bot's database is unavailable right now; please try again in a moment."
    if activity_type == "invoke":
        body = {"statusCode": 503, "type": CARD_ERROR, "value": {"code": "ServiceUnavailable", "message": message}}
    else:
        body = {"error": {"code": "DatabaseUnavailable", "message": message}}
    return TurnAnswer(503, body, has_body=True, retry_after=RETRY_AFTER_S)


class SdkTurns:
    """Reads the activity (as msrest would, `wire.from_json`), authenticates with the SDK, runs `bot.on_turn`
    through the adapter."""

    def __init__(self, adapter: CloudAdapter, authentication: BotFrameworkAuthentication, bot: Bot) -> None:
        self._adapter = adapter
        self._authentication = authentication
        self._bot = bot

    async def process(self, body: dict[str, Any], auth_header: str) -> TurnAnswer:
        try:
            activity = from_json(Activity, body)
        except Exception as exc:  # msrest raises several types for shape errors
            raise TurnRefused(400, "BadActivity", f"activity does not match the Bot Framework schema: {exc}") from None
        try:
            auth = await self._authentication.authenticate_request(activity, auth_header)
        except Exception as exc:  # the SDK raises PermissionError, jwt errors, KeyError... all mean "not authorised"
            log.info("refused unauthenticated activity: %s", exc)
            raise TurnRefused(401, "Unauthorized", "missing or invalid Authorization header") from None
        conversation_id = activity.conversation.id if activity.conversation else None
        with log_context(conversation_id=conversation_id, tenant_id=tenant_of(activity)):
            try:
                invoke_response = await self._adapter.process_activity(auth, activity, self._bot.on_turn)
            except DatabaseAway as away:
                log.debug("%s activity answered 503: the database is unavailable (%s)", activity.type, away)
                return not_processed(activity.type)
        if not invoke_response:
            return TurnAnswer()
        if invoke_response.body is None:  # e.g. 501 for an invoke nobody handles: a status, no body
            return TurnAnswer(invoke_response.status)
        answer = invoke_response.body
        if not isinstance(answer, dict | list | str | int | float | type(None)):
            answer = serializer_helper(answer)  # handlers usually hand over already-serialised bodies
        return TurnAnswer(invoke_response.status, answer, has_body=True)
