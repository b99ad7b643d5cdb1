"""Turn replies that cannot go now for want of a token wait in the outbox and go when it is back.

`TeamsAdapter` calls this when the identity service is down or slow: the turn answers Teams at once,
and the replies become outbox rows (category `reply`, never held by the engagement policy) that the
delivery worker sends with the token once there is one. Typing indicators are dropped, not queued.
"""

from __future__ import annotations

import logging

from botbuilder.core import TurnContext
from botbuilder.schema import Activity, ActivityTypes

from bot.delivery.proactive import ProactiveMessages
from state.outbox import OutboxItem

from .activities import tenant_of

log = logging.getLogger(__name__)

_NOT_QUEUED = {ActivityTypes.typing, ActivityTypes.trace, ActivityTypes.invoke_response, "delay"}


class QueuedReplies:
    def __init__(self, proactive: ProactiveMessages) -> None:
        self._proactive = proactive

    async def __call__(self, context: TurnContext, activities: list[Activity], reason: str) -> None:
        tenant = tenant_of(context.activity)
        items = [
            OutboxItem(payload=activity.serialize(), conversation_id=activity.conversation.id, tenant_id=tenant,
                       category="reply")
            for activity in activities
            if activity.type not in _NOT_QUEUED and activity.conversation is not None
        ]
        if items:
            await self._proactive.enqueue(items)
        log.warning("no Bot Connector token to reply in %s now (%s): %d reply(ies) wait in the outbox",
                    context.activity.conversation.id if context.activity.conversation else "?", reason, len(items))
