"""Talks to the Bot Connector for the delivery worker: send, update, open a 1:1 chat.

Implements the worker's `Sender` protocol with the SDK's ConnectorClient (pooled, see connector.py) and
turns every failure into a `SendFailure` that says what Teams' documentation says to do with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from botbuilder.schema import ChannelAccount, ConversationParameters, ErrorResponseException
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import AuthenticationConstants, ClaimsIdentity
from msrest.exceptions import ClientRequestError

from bot.delivery.failures import SendFailure

from .activities import activity_from_json
from .adapter import ReusingAuthentication
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


def classify(exc: BaseException) -> SendFailure:
    """Map an exception from the connector call to what the worker should do."""
    if isinstance(exc, SendFailure):
        return exc
    unavailable = token_unavailable_in(exc)
    if unavailable is not None:  # Teams was never asked: wait for the identity service, lose nothing
        return SendFailure("retry", None, "TokenUnavailable", unavailable.reason,
                           max(1.0, unavailable.retry_after), attempted=False)
    if isinstance(exc, ErrorResponseException):
        response = exc.response
        status = int(getattr(response, "status", 0) or getattr(response, "status_code", 0) or 0)
        error = getattr(exc.error, "error", None)
        code = str(getattr(error, "code", None) or f"HTTP{status}")
        message = str(getattr(error, "message", None) or exc.message or "")
        if status in _RETRY_STATUSES:
            return SendFailure("retry", status, code, message, _retry_after(getattr(response, "headers", None)))
        if status == 404 or (status == 403 and code in _GONE_CODES):
            return SendFailure("gone", status, code, message)
        return SendFailure("drop", status, code, message)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ClientError | ClientRequestError | ConnectionError):
        return SendFailure("retry", None, type(exc).__name__, str(exc) or "connection failed or timed out")
    return SendFailure("drop", None, type(exc).__name__, str(exc))


class TeamsSender:
    """The outbound calls of proactive delivery, with the bot's own credentials."""

    def __init__(self, authentication: ReusingAuthentication, app_id: str, timeout_s: float = 20.0) -> None:
        self._authentication = authentication
        self._claims = ClaimsIdentity(
            {AuthenticationConstants.AUDIENCE_CLAIM: app_id, AuthenticationConstants.APP_ID_CLAIM: app_id},
            is_authenticated=True,
        )
        self._timeout = timeout_s

    async def _client(self, service_url: str) -> ConnectorClient:
        factory = self._authentication.create_connector_factory(self._claims)
        return await factory.create(service_url, None)

    async def send(self, service_url: str, conversation_id: str, payload: dict[str, Any]) -> str:
        """Post a new activity; returns the id Teams gave it."""
        client = await self._client(service_url)
        activity = activity_from_json(payload)
        try:
            async with asyncio.timeout(self._timeout):
                response = await client.conversations.send_to_conversation(conversation_id, activity)
        except Exception as exc:
            raise classify(exc) from exc
        return str(getattr(response, "id", "") or "")

    async def update(self, service_url: str, conversation_id: str, activity_id: str, payload: dict[str, Any]) -> str:
        """Replace an activity in place (e.g. a progress message)."""
        client = await self._client(service_url)
        activity = activity_from_json(payload)
        activity.id = activity_id
        try:
            async with asyncio.timeout(self._timeout):
                await client.conversations.update_activity(conversation_id, activity_id, activity)
        except Exception as exc:
            raise classify(exc) from exc
        return activity_id

    async def open_personal_chat(self, service_url: str, tenant_id: str | None, bot_id: str, user_id: str) -> str:
        """Create (or get back) the 1:1 chat between the bot and a user; returns its conversation id."""
        client = await self._client(service_url)
        parameters = ConversationParameters(
            bot=ChannelAccount(id=bot_id),
            members=[ChannelAccount(id=user_id)],
            is_group=False,
            tenant_id=tenant_id,
            channel_data={"tenant": {"id": tenant_id}} if tenant_id else None,
        )
        try:
            async with asyncio.timeout(self._timeout):
                response = await client.conversations.create_conversation(parameters)
        except Exception as exc:
            raise classify(exc) from exc
        return str(response.id)
