"""Talks to the Bot Connector for the delivery worker: send, update, delete, open a 1:1 chat.

Implements the worker's `Sender` protocol: the stored activity JSON goes out as it is, over keep-alive
connections (`connector.JsonConnector`), with no msrest model built on the way. Every failure becomes
a `SendFailure` that says what Teams' documentation says to do with it (`classify`, also used for a
turn's replies).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from botbuilder.schema import ErrorResponseException
from msrest.exceptions import ClientRequestError

from bot.delivery.failures import SendFailure
from bot.service_urls import ServiceUrlRefused

from .adapter import ReusingAuthentication
from .connector import ConnectorError, CredentialsRefused, JsonConnector
from .tokens import token_unavailable_in

# Teams' error table (shared/teams-facts.md): what to do per status.
_RETRY_STATUSES = {412, 429, 502, 503, 504}
_GONE_CODES = {"ConversationBlockedByUser", "BotNotInConversationRoster", "BotDisabledByAdmin"}


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _by_status(status: int, code: str, message: str, retry_after: float | None) -> SendFailure:
    if status in _RETRY_STATUSES:
        return SendFailure("retry", status, code, message, retry_after)
    if status == 404 or (status == 403 and code in _GONE_CODES):
        return SendFailure("gone", status, code, message)
    return SendFailure("drop", status, code, message)


def classify(exc: BaseException) -> SendFailure:
    """Map an exception from the connector call to what the worker should do."""
    if isinstance(exc, SendFailure):
        return exc
    unavailable = token_unavailable_in(exc)
    if unavailable is not None:  # Teams was never asked: wait for the identity service, lose nothing
        return SendFailure("retry", None, "TokenUnavailable", unavailable.reason,
                           max(1.0, unavailable.retry_after), attempted=False)
    if isinstance(exc, CredentialsRefused):  # sending is paused, not this message's fault: lose nothing
        return SendFailure("retry", 401, exc.code, exc.message, max(1.0, exc.retry_after or 0.0), attempted=False)
    if isinstance(exc, ServiceUrlRefused):  # never sent: the bot's token does not go there
        return SendFailure("drop", None, "ServiceUrlNotAllowed", exc.reason)
    if isinstance(exc, ConnectorError):
        return _by_status(exc.status, exc.code, exc.message, exc.retry_after)
    if isinstance(exc, ErrorResponseException):  # the SDK's ConnectorClient (rosters, SDK calls in a turn)
        response = exc.response
        status = int(getattr(response, "status", 0) or getattr(response, "status_code", 0) or 0)
        error = getattr(exc.error, "error", None)
        code = str(getattr(error, "code", None) or f"HTTP{status}")
        message = str(getattr(error, "message", None) or exc.message or "")
        return _by_status(status, code, message, _retry_after(getattr(response, "headers", None)))
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ClientError | ClientRequestError | ConnectionError):
        return SendFailure("retry", None, type(exc).__name__, str(exc) or "connection failed or timed out")
    return SendFailure("drop", None, type(exc).__name__, str(exc))


class TeamsSender:
    """The outbound calls of proactive delivery, with the bot's own credentials."""

    def __init__(self, authentication: ReusingAuthentication, app_id: str, timeout_s: float = 20.0) -> None:
        """`app_id` is the bot's (its token, from `authentication`, is what the calls carry)."""
        self._connector = JsonConnector(authentication.session, authentication.tokens, timeout_s=timeout_s)
        self.app_id = app_id

    async def send(self, service_url: str, conversation_id: str, payload: dict[str, Any]) -> str:
        """Post a new activity (the stored JSON, as it is); returns the id Teams gave it."""
        try:
            answer = await self._connector.send(service_url, conversation_id, payload)
        except Exception as exc:
            raise classify(exc) from exc
        return str(answer.get("id") or "")

    async def update(self, service_url: str, conversation_id: str, activity_id: str, payload: dict[str, Any]) -> str:
        """Replace an activity in place (e.g. a progress message)."""
        try:
            await self._connector.update(service_url, conversation_id, activity_id, {**payload, "id": activity_id})
        except Exception as exc:
            raise classify(exc) from exc
        return activity_id

    async def delete(self, service_url: str, conversation_id: str, activity_id: str) -> None:
        """Delete an activity the bot sent (a recalled notice)."""
        try:
            await self._connector.delete(service_url, conversation_id, activity_id)
        except Exception as exc:
            raise classify(exc) from exc

    async def open_personal_chat(self, service_url: str, tenant_id: str | None, bot_id: str, user_id: str) -> str:
        """Create (or get back) the 1:1 chat between the bot and a user; returns its conversation id."""
        parameters: dict[str, Any] = {"isGroup": False, "bot": {"id": bot_id}, "members": [{"id": user_id}]}
        if tenant_id:
            parameters |= {"tenantId": tenant_id, "channelData": {"tenant": {"id": tenant_id}}}
        try:
            answer = await self._connector.create_conversation(service_url, parameters)
        except Exception as exc:
            raise classify(exc) from exc
        if not answer.get("id"):
            raise SendFailure("retry", None, "NoConversationId", "Teams created no conversation id")
        return str(answer["id"])
