"""Recall: delete a notice's messages that went (POST /api/notify/batches/{id}/recall).

A scheduler job per broadcast walks its sent messages by row id (the cursor rides in the job's payload, so a
restart goes on where it was) and deletes each with the Bot Connector's delete activity. Every delete takes a
send slot from the delivery worker's queue (`acquire_reply_slot`, as a turn's replies do), so recalls and sends
share one budget per conversation and per tenant; a 429 penalises the conversation for its Retry-After and the
job comes back then. A message Teams no longer has (404) counts as recalled; one Teams refuses for good is
left and logged.
"""

from __future__ import annotations

import logging
from typing import Protocol

from bot.delivery.failures import SendFailure
from bot.metrics import Metrics
from scheduler.jobs import Job
from scheduler.scheduler import Scheduler
from state.model import conversation_key
from state.notices import RecallStore
from state.references import ConversationReferences

log = logging.getLogger(__name__)

RECALL = "notice.recall"
BUSY_RETRY_S = 1.0  # no send slot free now (the tenant's budget is in use): try again then


def recall_key(broadcast_id: int) -> str:
    return f"recall:{broadcast_id}"


class Deleter(Protocol):
    async def delete(self, service_url: str, conversation_id: str, activity_id: str) -> None: ...


class SendSlots(Protocol):
    """The delivery worker's budget (bot/delivery/worker.py)."""

    async def acquire_reply_slot(self, conversation_id: str, tenant_id: str | None, wait_s: float) -> bool: ...

    def release_reply_slot(self, conversation_id: str, tenant_id: str | None, *,
                           throttled_for: float | None = None) -> None: ...


class Recalls:
    def __init__(self, store: RecallStore, references: ConversationReferences, deleter: Deleter, slots: SendSlots,
                 scheduler: Scheduler, metrics: Metrics, *, page: int = 200) -> None:
        self._store = store
        self._references = references
        self._deleter = deleter
        self._slots = slots
        self._scheduler = scheduler
        self._metrics = metrics
        self.page = page
        scheduler.register(RECALL, self._job)

    async def start(self, broadcast_id: int) -> int:
        """Begin (or begin again) recalling; returns how many messages are to be deleted."""
        count = await self._store.to_recall(broadcast_id)
        await self._scheduler.schedule_in(0, RECALL, {"broadcast": broadcast_id, "after": 0},
                                          key=recall_key(broadcast_id))
        return count

    async def _job(self, job: Job) -> None:
        broadcast_id, after = int(job.payload.get("broadcast", 0)), int(job.payload.get("after", 0))
        while True:
            messages = await self._store.sent_page(broadcast_id, after, self.page)
            recalled: list[int] = []
            wait: float | None = None
            for message in messages:
                record = await self._references.get(conversation_key(message.conversation_id))
                if record is None:  # the bot forgot the conversation: nothing to delete with
                    after = message.row_id
                    continue
                if not await self._slots.acquire_reply_slot(message.conversation_id, message.tenant_id, 0):
                    wait = BUSY_RETRY_S
                    break
                throttled: float | None = None
                try:
                    await self._deleter.delete(record.service_url, message.conversation_id, message.activity_id)
                    recalled.append(message.row_id)
                except SendFailure as failure:
                    if failure.status == 404:  # already gone
                        recalled.append(message.row_id)
                    elif failure.action == "retry":
                        wait = failure.retry_after or BUSY_RETRY_S
                        throttled = failure.retry_after if failure.status == 429 else None
                    else:
                        log.warning("recall of message %d refused by Teams (%s); left", message.row_id, failure)
                finally:
                    self._slots.release_reply_slot(message.conversation_id, message.tenant_id,
                                                   throttled_for=throttled)
                if wait is not None:
                    break
                after = message.row_id
            marked = await self._store.mark_recalled(broadcast_id, recalled)
            self._metrics.notice("recalled", marked)
            if wait is not None:  # the cursor stays before the message that has to wait
                await self._scheduler.schedule_in(wait, RECALL, {"broadcast": broadcast_id, "after": after},
                                                  key=recall_key(broadcast_id))
                return
            if len(messages) < self.page:
                return
