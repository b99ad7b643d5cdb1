"""A notice's life after POST /api/notify: scheduled, sending, cancelled or finished, and how to cancel it.

Cancelling (DELETE /api/notify/batches/{id}) first marks the broadcast cancelled (its expansion writes no more
rows; a scheduled one never starts), then tells every replica's delivery worker to start no send of its rows
(this replica at once, the others through the database's notification channel), waits until no send of it is
in flight here and their outcomes are written, then cancels the rows not sent yet (pending or held) in short
transactions. So once the answer is given, this replica sends none of its messages; another replica may finish
a send it had already started when the notification reached it (its outcome then says `sent`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.delivery.worker import DeliveryWorker
from bot.metrics import Metrics
from scheduler.scheduler import Scheduler
from state.broadcasts import CANCELLED, SCHEDULED, Broadcast
from state.clock import Clock
from state.notices import NoticeControl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cancelled:
    rows: int  # messages that will not go
    already: bool  # it was cancelled before


def public_state(batch: Broadcast) -> str:
    """scheduled, sending, cancelled or finished."""
    if batch.state == SCHEDULED:
        return "scheduled"
    if batch.state == CANCELLED:
        return "cancelled"
    return "finished" if batch.finished else "sending"


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class NoticeLifecycle:
    """Cancels broadcasts and tells how far they are (with an estimated finish while sending)."""

    def __init__(self, control: NoticeControl, worker: DeliveryWorker, scheduler: Scheduler, clock: Clock,
                 metrics: Metrics, *, tenant_rps: float, expansion_key: Any) -> None:
        self._control = control
        self._worker = worker
        self._scheduler = scheduler
        self._clock = clock
        self._metrics = metrics
        self._tenant_rps = tenant_rps
        self._expansion_key = expansion_key
        control.subscribe(self._stopped_elsewhere)

    def _stopped_elsewhere(self, payload: str) -> None:
        if payload.isdigit():
            self._worker.stop_broadcast(int(payload))

    async def cancel(self, batch: Broadcast) -> Cancelled:
        """Stop everything of `batch` not sent yet (see the module's docstring for the order and why)."""
        first = await self._control.cancel(batch.id)
        await self._scheduler.cancel(key=self._expansion_key(batch.id))
        self._worker.stop_broadcast(batch.id)
        await self._control.announce_stopped(batch.id)
        await self._worker.broadcast_settled(batch.id)  # the sends that had started end, and are written
        await self._worker.flush()
        rows, after = 0, 0
        while True:
            cancelled, last = await self._control.cancel_rows(batch.id, after)
            rows += cancelled
            if last is None:
                break
            after = last
        if first:
            self._metrics.notice("cancelled")
            self._metrics.message(batch.category, "cancelled", rows)
            log.info("broadcast %s cancelled: %d message(s) will not go", batch.public_id, rows)
        return Cancelled(rows, already=not first)

    async def status(self, batch: Broadcast) -> dict[str, Any]:
        """The notice's fields of the batch status."""
        state = public_state(batch)
        fields: dict[str, Any] = {"state": state, "sendAt": iso(batch.send_at), "cancelledAt": iso(batch.cancelled_at),
                                  "estimatedFinishAt": None, "recalled": batch.recalled}
        pending = batch.counts.get("pending", 0)
        if state == "sending" and pending:
            # each tenant's budget sends its queue; the busiest finishes last. Its queue is read in bounded work
            # (other notices' rows in it count too), and this notice has at most `pending` rows in it
            rows = min(pending, await self._control.busiest_queue())
            fields["estimatedFinishAt"] = iso(self._clock.now().timestamp() + rows / self._tenant_rps)
        return fields
