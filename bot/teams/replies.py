"""A turn's replies: sent within Teams' limits as plain JSON, or handed to the outbox, in order.

`TurnReplies.send` (called by `TeamsAdapter` for every reply of a turn):

1. If an earlier reply of this turn already waits in the outbox, this one follows it there (so a later
   reply never overtakes an earlier one).
2. It takes a send slot from the delivery worker (`ReplySlots`: the same per-conversation windows and
   per-tenant budget as proactive sends), waiting at most `wait_s` (1 s). None in time: to the outbox.
3. It posts the activity as JSON (`connector.JsonConnector`, keep-alive connections; no msrest on the way).
   No token for the Bot Connector yet, 429 (after Retry-After), 412/502/503/504 or a timeout: to the outbox,
   where the delivery worker retries it. Any other error fails the turn as the SDK's own send would.

`QueuedReplies` makes the outbox rows: category `reply` (never held by the engagement policy) and priority
`REPLY_PRIORITY`, so they go before the notifications of their conversation and, through the send queue's
express lane, before other conversations' notifications of their tenant. The turn then answers Teams at
once. Typing indicators are dropped rather than queued or waited for.
"""

from __future__ import annotations

import logging
from typing import Protocol

from botbuilder.core import TurnContext
from botbuilder.schema import Activity, ActivityTypes, ResourceResponse

from bot.delivery.failures import SendFailure
from bot.delivery.proactive import ProactiveMessages
from state.clock import Clock
from state.outbox import REPLY_PRIORITY, OutboxItem

from .activities import tenant_of
from .connector import JsonConnector
from .sender import classify
from .wire import request_body

log = logging.getLogger(__name__)

_NOT_QUEUED = {ActivityTypes.typing, ActivityTypes.trace, ActivityTypes.invoke_response, "delay"}
_WAITING = "replies.waiting_in_outbox"  # turn_state: an earlier reply of this turn went to the outbox
DEFAULT_RETRY_AFTER_S = 2.0  # a 429 without Retry-After


class ReplySlots(Protocol):
    """Send slots within Teams' limits, shared with proactive sends (bot/delivery/worker.py)."""

    async def acquire_reply_slot(self, conversation_id: str, tenant_id: str | None, wait_s: float) -> bool: ...

    def release_reply_slot(self, conversation_id: str, tenant_id: str | None, *,
                           throttled_for: float | None = None) -> None: ...


class QueuedReplies:
    """Puts a turn's replies into the outbox, to be sent by the delivery worker (after `retry_after` s)."""

    def __init__(self, proactive: ProactiveMessages, clock: Clock) -> None:
        self._proactive = proactive
        self._clock = clock

    async def __call__(self, context: TurnContext, activities: list[Activity], reason: str,
                       retry_after: float = 0.0, *, level: int = logging.WARNING) -> None:
        tenant = tenant_of(context.activity)
        not_before = self._clock.now().timestamp() + retry_after if retry_after > 0 else None
        items = [
            OutboxItem(payload=request_body(activity), conversation_id=activity.conversation.id, tenant_id=tenant,
                       category="reply", priority=REPLY_PRIORITY, not_before=not_before)
            for activity in activities
            if activity.type not in _NOT_QUEUED and activity.conversation is not None
        ]
        if items:
            context.turn_state[_WAITING] = True
            await self._proactive.enqueue(items)
        log.log(level, "cannot reply in %s now (%s): %d reply(ies) wait in the outbox",
                context.activity.conversation.id if context.activity.conversation else "?", reason, len(items))


class TurnReplies:
    """Sends each reply of a turn (see the module docstring)."""

    def __init__(self, connector: JsonConnector, slots: ReplySlots, queued: QueuedReplies, *,
                 wait_s: float = 1.0) -> None:
        self._connector = connector  # its timeout (10 s for replies) makes a reply that hangs go to the outbox
        self._slots = slots
        self._queued = queued
        self.wait_s = wait_s  # how long a reply may wait for a send slot before it goes to the outbox

    async def send(self, context: TurnContext, activity: Activity) -> ResourceResponse:
        conversation_id = activity.conversation.id if activity.conversation else ""
        typing = activity.type == ActivityTypes.typing
        if context.turn_state.get(_WAITING):
            return await self._later(context, activity, "an earlier reply of this turn waits in the outbox",
                                     level=logging.INFO)
        tenant = tenant_of(context.activity)
        if not await self._slots.acquire_reply_slot(conversation_id, tenant, 0.0 if typing else self.wait_s):
            return await self._later(context, activity, f"no send slot within {self.wait_s:g} s (Teams' limits)",
                                     level=logging.INFO)  # many people of one tenant at once: normal, not a fault
        failure: SendFailure | None = None
        answer: dict[str, object] = {}
        try:
            service_url = activity.service_url or context.activity.service_url
            answer = await self._connector.send(service_url, conversation_id, request_body(activity),
                                                activity.reply_to_id)
        except Exception as exc:
            failure = classify(exc)
            if failure.action != "retry":
                raise failure from exc
        finally:
            throttled_for = None
            if failure is not None and failure.status == 429:
                throttled_for = failure.retry_after if failure.retry_after is not None else DEFAULT_RETRY_AFTER_S
            self._slots.release_reply_slot(conversation_id, tenant, throttled_for=throttled_for)
        if failure is not None:
            return await self._later(context, activity, str(failure), failure.retry_after or 0.0)
        return ResourceResponse(id=str(answer.get("id") or ""))

    async def _later(self, context: TurnContext, activity: Activity, reason: str, retry_after: float = 0.0, *,
                     level: int = logging.WARNING) -> ResourceResponse:
        if activity.type != ActivityTypes.typing:  # a late typing indicator is worse than none
            await self._queued(context, [activity], reason, retry_after, level=level)
        return ResourceResponse()
