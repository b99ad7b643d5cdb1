"""The one door every proactive message goes through: policy, then the durable outbox, then the worker.

Each item consults the engagement policy first (state/engagement.py): deliver now, hold until the user's
topic ends, or drop (muted notifications, unreachable conversations). Held items about the same subject
supersede each other; several released together go out as ONE digest message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from bot.metrics import Metrics
from scheduler.clock import Clock
from scheduler.scheduler import Scheduler
from state.engagement import Decision, Engagement, decide
from state.model import conversation_subject, hold_key, user_subject
from state.outbox import OutboxItem, OutboxStore
from state.preferences import Preferences
from state.references import ConversationReferences

from .digest import digest_payload
from .worker import DeliveryWorker

log = logging.getLogger(__name__)

RELEASE_OVERDUE = "engagement.release_overdue"
_STATUS: dict[str, Literal["pending", "held", "dropped"]] = {"deliver": "pending", "hold": "held", "drop": "dropped"}


@dataclass(frozen=True)
class Admission:
    """What happened to one item: its outbox id, whether it is new, and the policy's decision."""

    id: int
    created: bool
    decision: Decision


class ProactiveMessages:
    """Nothing sends directly: welcome, notifications, progress and results all come here."""

    def __init__(
        self,
        store: OutboxStore,
        worker: DeliveryWorker,
        references: ConversationReferences,
        engagement: Engagement,
        preferences: Preferences,
        scheduler: Scheduler,
        clock: Clock,
        *,
        hold_max_seconds: float = 600.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._worker = worker
        self._references = references
        self._engagement = engagement
        self._preferences = preferences
        self._scheduler = scheduler
        self._clock = clock
        self._hold_max = hold_max_seconds
        self._metrics = metrics or worker.metrics
        engagement.on_topic_ended(self.release)
        scheduler.register(RELEASE_OVERDUE, self._release_overdue)

    async def _decisions(self, items: Sequence[OutboxItem]) -> list[tuple[Decision, str | None]]:
        """The policy's answer for each item, and the conversation it concerns (if known); lookups batched."""
        records = await self._references.get_many(i.conversation_id for i in items if i.conversation_id)
        targets: list[tuple[str | None, list[str]]] = []
        for item in items:
            conversation_id, subjects = item.conversation_id, []
            if conversation_id:
                subjects.append(conversation_subject(conversation_id))
                record = records.get(conversation_id)
                if record is not None and record.conversation_type == "personal" and record.user_id:
                    subjects.append(user_subject(record.user_id))
            if item.target_user_id:  # rare: a user without a known 1:1 chat
                user_id = await self._references.teams_user_id(item.target_user_id) or item.target_user_id
                subjects.append(user_subject(user_id))
                personal = [r for r in await self._references.for_user(user_id) if r.conversation_type == "personal"]
                conversation_id = conversation_id or (personal[0].conversation_id if personal else None)
            targets.append((conversation_id, subjects))
        states = await self._engagement.states(c for c, _ in targets if c)
        notifications = [subjects for (_, subjects), item in zip(targets, items, strict=True)
                         if item.category == "notification"]
        muted = await self._preferences.muted(s for subjects in notifications for s in subjects)
        return [
            (decide(states.get(conversation_id, "idle") if conversation_id else "idle", category=item.category,
                    urgent=item.priority > 0,
                    muted=item.category == "notification" and any(s in muted for s in subjects)),
             conversation_id)
            for (conversation_id, subjects), item in zip(targets, items, strict=True)
        ]

    async def enqueue(self, items: Sequence[OutboxItem]) -> list[Admission]:
        """Apply the policy, commit the rows in one transaction, then wake the worker for those that may go now."""
        if not items:
            return []
        decisions = await self._decisions(items)
        decided = [replace(item, status=_STATUS[d.action], note=d.reason if d.action == "drop" else item.note)
                   for item, (d, _) in zip(items, decisions, strict=True)]
        results = await self._store.enqueue(decided)
        now = self._clock.now().timestamp()
        admissions, deliver = [], []
        for item, (decision, conversation_id), result in zip(decided, decisions, results, strict=True):
            admissions.append(Admission(result.id, result.created, decision))
            if not result.created:
                continue
            if decision.action != "deliver":  # delivered ones are counted as queued by the worker
                self._metrics.message(item.category, "held" if decision.action == "hold" else "dropped")
            if decision.action == "deliver":
                deliver.append(item.as_row(result.id, now))
            elif decision.action == "hold" and conversation_id:
                await self._hold(result.id, conversation_id, item)
            else:
                log.info("dropped a %s for %s: %s", item.category, conversation_id or item.target_user_id,
                         decision.reason)
        self._worker.submit(deliver)
        return admissions

    async def _hold(self, row_id: int, conversation_id: str, item: OutboxItem) -> None:
        if item.conversation_id is None:  # a user-targeted item waits in the user's 1:1 chat
            await self._store.retarget(row_id, conversation_id)
        if item.subject:
            superseded = await self._store.supersede(conversation_id, item.subject, keep=row_id)
            self._metrics.message(item.category, "superseded", superseded)
        if await self._scheduler.get(key=hold_key(conversation_id)) is None:
            await self._scheduler.schedule_in(
                self._hold_max, RELEASE_OVERDUE, {"conversation_id": conversation_id}, key=hold_key(conversation_id)
            )

    async def release(self, conversation_id: str, *, resume_prompt: str | None = None) -> int:
        """Send what was held for a conversation: one item as is, several as one digest. Returns rows released."""
        await self._scheduler.cancel(key=hold_key(conversation_id))
        held = await self._store.held(conversation_id)
        if not held:
            return 0
        if len(held) == 1 and resume_prompt is None:
            await self._store.set_status([held[0].id], "pending", only_from=["held"])
            held[0].status = "pending"
            self._worker.submit(held)
        else:
            first = held[0]
            [digest] = await self._store.enqueue([OutboxItem(
                payload=digest_payload(held, resume_prompt=resume_prompt), conversation_id=conversation_id,
                tenant_id=first.tenant_id, category="digest", priority=max(r.priority for r in held),
            )])
            await self._store.set_status([r.id for r in held], "merged", only_from=["held"],
                                         note=f"delivered in digest {digest.id}")
            self._worker.submit(await self._store.get_many([digest.id]))
        for row in held:
            self._metrics.message(row.category, "released")
        log.info("released %d held item(s) in %s", len(held), conversation_id)
        return len(held)

    async def _release_overdue(self, job: object) -> None:
        """HOLD_MAX_SECONDS passed mid-topic: deliver, then re-ask the pending question."""
        conversation_id = str(getattr(job, "payload", {}).get("conversation_id", ""))
        if not conversation_id:
            return
        prompt = await self._engagement.pending_prompt(conversation_id)
        in_topic = await self._engagement.state(conversation_id) == "in_topic"
        await self.release(conversation_id, resume_prompt=prompt if in_topic else None)

    async def conversation_removed(self, conversation_id: str) -> None:
        """The bot was uninstalled: nothing more goes there until it is installed again."""
        await self._engagement.fire(conversation_id, "removed")
        await self._engagement.forget_welcome(conversation_id)
        await self._scheduler.cancel(key=hold_key(conversation_id))
        cancelled = await self._store.cancel_conversation(conversation_id, "the bot was removed")
        self._worker.cancel(list(cancelled))
        for category in cancelled.values():
            self._metrics.message(category, "cancelled")
