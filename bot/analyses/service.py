"""Long-running analyses: at most two messages each — the acknowledgement, updated in place with progress
and finally "done", and the result (a chart of the price history next to its statistics).

The acknowledgement is posted through the outbox (category `progress`, never held) so its Teams activity id is
known and later updates replace it. An analysis is a row plus scheduler jobs (progress steps and the finish),
so it survives restarts: after a crash the jobs run when the process is back, and it resumes on schedule. The
result is addressed to the person who asked (in a group chat or channel: @mentioning them, and held only
while they are mid-topic there).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from bot.delivery.proactive import ProactiveMessages
from bot.prices.sources import PriceSource
from dialogs.mentions import with_mention
from dialogs.replies import escape
from scheduler.jobs import Job
from scheduler.scheduler import Scheduler
from state.analyses import AnalysisRow, AnalysisStore, Refusal
from state.clock import Clock
from state.db import Connection
from state.model import GROUP_SCOPES, UserRef, user_subject
from state.outbox import OutboxItem
from state.preferences import Preferences
from state.prices import PriceLog
from state.references import ConversationReferences

from .report import result_payload, summarize

log = logging.getLogger(__name__)

PROGRESS = "analysis.progress"
FINISH = "analysis.finish"
_ANY = {"analysis", "analyses", "all", ""}


class _Refused(Exception):
    def __init__(self, reason: Refusal) -> None:
        super().__init__(reason)
        self.reason: Refusal = reason


class AnalysisService:
    """Implements the dialogs' Analyses port."""

    def __init__(self, store: AnalysisStore, prices: PriceLog, proactive: ProactiveMessages, scheduler: Scheduler,
                 references: ConversationReferences, clock: Clock, *, source: PriceSource | None = None,
                 analyze_seconds: float = 30.0, progress_delays: Sequence[float] = (5, 15, 30),
                 repeat_every: float = 30.0, preferences: Preferences | None = None,
                 max_per_user: int = 3, max_per_tenant: int = 100) -> None:
        self._max_user = max_per_user  # MAX_ANALYSES_PER_USER: running at once
        self._max_tenant = max_per_tenant  # MAX_ANALYSES_PER_TENANT
        self._store = store
        self._prices = prices
        self._proactive = proactive
        self._scheduler = scheduler
        self._references = references
        self._clock = clock
        self._source = source
        self._duration = analyze_seconds
        self._delays = sorted(progress_delays)
        self._repeat = repeat_every
        self._preferences = preferences
        scheduler.register(PROGRESS, self._progress)
        scheduler.register(FINISH, self._finish)

    async def start(self, user: UserRef, conversation_id: str, product: str) -> str | None:
        """Start the analysis and post its acknowledgement (None: nothing more to say in the turn)."""
        if await self._store.is_running(user.id, product):
            return self._refusal("same product", product)
        analysis_id = uuid.uuid4().hex[:12]
        record = await self._references.get(conversation_id)
        tenant_id = record.tenant_id if record else None
        due_at = self._clock.now().timestamp() + self._duration

        async with self._scheduler.staging() as stage:
            async def begin(tx: Connection) -> None:  # the row and its jobs, with the acknowledgement
                refusal = await self._store.admit(tx, user.id, tenant_id, product, per_user=self._max_user,
                                                  per_tenant=self._max_tenant)
                if refusal is not None:
                    raise _Refused(refusal)  # rolls the transaction back: no row, no job, no acknowledgement
                await self._store.insert(analysis_id, user.id, conversation_id, tenant_id, product, due_at, tx)
                await stage.schedule_in(tx, self._duration, FINISH, {"id": analysis_id},
                                        key=f"analysis:{analysis_id}")
                if self._delays and self._delays[0] < self._duration:
                    await stage.schedule_in(tx, self._delays[0], PROGRESS, {"id": analysis_id, "step": 0},
                                            key=f"analysis-progress:{analysis_id}")

            ack = OutboxItem(payload=_message(f"⏳ Working on it: analysing **{product}** takes about "
                                              f"{self._duration:g} s. Keep chatting; I'll update this message and "
                                              "post the result here."),
                             conversation_id=conversation_id, tenant_id=tenant_id, category="progress")
            try:
                [admission] = await self._proactive.enqueue([ack], also=begin)
            except _Refused as refused:
                return self._refusal(refused.reason, product)
        await self._store.set_progress_row(analysis_id, admission.id)
        return None

    def _refusal(self, reason: Refusal, product: str) -> str:
        if reason == "same product":
            return (f"I'm already analysing **{escape(product)}**; I'll message you when it's done. `status` shows "
                    "progress.")
        if reason == "user":
            return (f"You already have {self._max_user} analyses running, the most at once. Wait for one to finish "
                    "(`status` shows them) or stop one with `cancel <product>`.")
        return (f"Your organisation has {self._max_tenant} analyses running, the most at once. Please try again "
                "in a few minutes.")

    async def running(self, user_id: str) -> list[str]:
        now = self._clock.now().timestamp()
        return [f"{r.product} ({max(0, round(r.due_at - now))} s left)" for r in await self._store.running(user_id)]

    async def cancel(self, user_id: str, product: str | None = None) -> int:
        if product is None or product.strip().lower() in _ANY:
            rows = await self._store.running(user_id)
            rows = rows[-1:] if product is not None and product.strip().lower() == "analysis" else rows
        else:
            rows = await self._store.running(user_id, product)
        for row in rows:
            await self._end(row.id, "cancelled", "Cancelled.")
        return len(rows)

    async def _progress(self, job: Job) -> None:
        row = await self._store.get(str(job.payload["id"]))
        if row is None or row.status != "running":
            return
        now = self._clock.now().timestamp()
        elapsed, left = now - row.started_at, max(0.0, row.due_at - now)
        text = (f"⏳ Still working on **{row.product}**: {elapsed:.0f} s so far, about {left:.0f} s to go. "
                "Keep chatting; I'll post the result here.")
        await self._say_progress(row, text)
        step = int(job.payload.get("step", 0)) + 1
        gap = self._delays[step] - self._delays[step - 1] if step < len(self._delays) else self._repeat
        if elapsed + gap < row.due_at - row.started_at:
            await self._scheduler.schedule_in(gap, PROGRESS, {"id": row.id, "step": step},
                                              key=f"analysis-progress:{row.id}")

    async def _say_progress(self, row: AnalysisRow, text: str) -> None:
        """Post the acknowledgement once, then update that same message in place."""
        item = OutboxItem(payload=_message(text), conversation_id=row.conversation_id, tenant_id=row.tenant_id,
                          category="progress")
        if row.progress_row is None:
            [admission] = await self._proactive.enqueue([item])
            await self._store.set_progress_row(row.id, admission.id)
        else:
            item.kind, item.update_of = "update", row.progress_row
            await self._proactive.enqueue([item])

    async def _finish(self, job: Job) -> None:
        row = await self._store.get(str(job.payload["id"]))
        if row is None or row.status != "running":
            return
        history = await self._prices.history(row.product)
        if not history and self._source is not None:
            quote = await self._source.fetch(row.product)
            if quote is not None:
                history = [quote]
        timezone = await self._preferences.timezone(user_subject(row.user_id)) if self._preferences else "UTC"
        payload = result_payload(summarize(row.product, history), timezone=timezone)
        record = await self._references.get(row.conversation_id)
        if record is not None and record.conversation_type in GROUP_SCOPES:
            name = await self._references.member_name(row.conversation_id, row.user_id)
            payload = with_mention(payload, UserRef(row.user_id, name=name), ", your analysis:")
        await self._proactive.enqueue([OutboxItem(
            payload=payload, conversation_id=row.conversation_id, target_user_id=row.user_id,
            tenant_id=row.tenant_id, category="result", dedup_key=f"analysis-result:{row.id}",
        )])
        await self._end(row.id, "done", "✅ Done: the result is in the next message.")
        log.info("analysis %s of %s finished (%d observations)", row.id, row.product, len(history))

    async def _end(self, analysis_id: str, status: str, progress_text: str) -> None:
        await self._scheduler.cancel(key=f"analysis-progress:{analysis_id}")
        if status != "done":
            await self._scheduler.cancel(key=f"analysis:{analysis_id}")
        await self._store.set_status(analysis_id, status)
        row = await self._store.get(analysis_id)
        if row is not None and row.progress_row is not None:
            await self._say_progress(row, f"**{row.product}**: {progress_text}")


def _message(text: str) -> dict[str, Any]:
    return {"type": "message", "text": text, "textFormat": "markdown"}
