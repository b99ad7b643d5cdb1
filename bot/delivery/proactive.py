"""The one door every proactive message goes through: policy, then the durable outbox, then the worker.

Each item consults the engagement policy first (state/engagement.py): deliver now, hold until the user's
topic ends, or drop (muted notifications, unreachable conversations). In a personal chat the user's open
topic holds everything; in a group chat or channel only items addressed to one person (their alert, their
result) wait, and only for that person's topic, while items for the whole conversation go out at once.
Held items about the same subject supersede each other; several released together go out as ONE digest.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from scheduler.clock import Clock
from scheduler.scheduler import Scheduler
from state.engagement import Decision, Engagement, decide
from state.model import GROUP_SCOPES, conversation_key, conversation_subject, hold_key, user_subject
from state.outbox import OutboxItem, OutboxStore
from state.preferences import Preferences
from state.references import ConversationReferences

from .digest import digest_payload
from .worker import DeliveryWorker

log = logging.getLogger(__name__)

RELEASE_OVERDUE = "engagement.release_overdue"
_STATUS: dict[str, Literal["pending", "held", "dropped"]] = {"deliver": "pending", "hold": "held", "drop": "dropped"}


@dataclass
class _Target:
    """What the policy needs to know about one item's destination."""

    conversation_id: str | None = None  # the conversation (a channel, never one of its threads), if known
    subjects: list[str] = field(default_factory=list)  # whose mutes apply
    group: bool = False  # a group chat or channel
    member: str | None = None  # there: the one person the item is addressed to


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
    ) -> None:
        self._store = store
        self._worker = worker
        self._references = references
        self._engagement = engagement
        self._preferences = preferences
        self._scheduler = scheduler
        self._clock = clock
        self._hold_max = hold_max_seconds
        self.counts: Counter[str] = Counter()
        engagement.on_topic_ended(self.release)
        scheduler.register(RELEASE_OVERDUE, self._release_overdue)

    async def _decisions(self, items: Sequence[OutboxItem]) -> list[tuple[Decision, _Target]]:
        """The policy's answer for each item, and where it goes; lookups batched."""
        records = await self._references.get_many(
            conversation_key(i.conversation_id) for i in items if i.conversation_id)
        targets: list[_Target] = []
        for item in items:
            target = _Target()
            if item.conversation_id:
                target.conversation_id = key = conversation_key(item.conversation_id)
                target.subjects.append(conversation_subject(key))
                record = records.get(key)
                target.group = record is not None and record.conversation_type in GROUP_SCOPES
                if record is not None and record.conversation_type == "personal" and record.user_id:
                    target.subjects.append(user_subject(record.user_id))
                if item.target_user_id:  # addressed to one person in this conversation
                    target.subjects.append(user_subject(item.target_user_id))
                    target.member = item.target_user_id if target.group else None
            elif item.target_user_id:  # rare: a user without a known 1:1 chat
                user_id = await self._references.teams_user_id(item.target_user_id) or item.target_user_id
                target.subjects.append(user_subject(user_id))
                personal = [r for r in await self._references.for_user(user_id) if r.conversation_type == "personal"]
                target.conversation_id = personal[0].conversation_id if personal else None
            targets.append(target)
        states = await self._engagement.states(t.conversation_id for t in targets if t.conversation_id)
        in_topic = await self._engagement.members_in_topic(
            (t.conversation_id, t.member) for t in targets if t.conversation_id and t.member)
        notifications = [t.subjects for t, item in zip(targets, items, strict=True) if item.category == "notification"]
        muted = await self._preferences.muted(s for subjects in notifications for s in subjects)
        decisions = []
        for target, item in zip(targets, items, strict=True):
            state = states.get(target.conversation_id, "idle") if target.conversation_id else "idle"
            if target.group and state != "inactive":  # there, only the addressee's own topic holds an item
                state = "in_topic" if (target.conversation_id, target.member) in in_topic else "idle"
            muted_here = item.category == "notification" and any(s in muted for s in target.subjects)
            decisions.append((decide(state, category=item.category, urgent=item.priority > 0, muted=muted_here),
                              target))
        return decisions

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
        for item, (decision, target), result in zip(decided, decisions, results, strict=True):
            admissions.append(Admission(result.id, result.created, decision))
            if not result.created:
                continue
            self.counts[{"deliver": "admitted", "hold": "held", "drop": "dropped"}[decision.action]] += 1
            if decision.action == "deliver":
                deliver.append(item.as_row(result.id, now))
            elif decision.action == "hold" and target.conversation_id:
                await self._hold(result.id, target, item)
            else:
                log.info("dropped a %s for %s: %s", item.category, target.conversation_id or item.target_user_id,
                         decision.reason)
        self._worker.submit(deliver)
        return admissions

    async def _hold(self, row_id: int, target: _Target, item: OutboxItem) -> None:
        conversation_id, member = target.conversation_id, target.member
        assert conversation_id is not None
        if item.conversation_id is None:  # a user-targeted item waits in the user's 1:1 chat
            await self._store.retarget(row_id, conversation_id)
        if item.subject:
            superseded = await self._store.supersede(conversation_id, item.subject, keep=row_id,
                                                     user_id=item.target_user_id)
            self.counts["superseded"] += superseded
        key = hold_key(conversation_id, member)
        if await self._scheduler.get(key=key) is None:
            await self._scheduler.schedule_in(
                self._hold_max, RELEASE_OVERDUE, {"conversation_id": conversation_id, "user_id": member}, key=key
            )

    async def release(self, conversation_id: str, user_id: str | None = None, *,
                      resume_prompt: str | None = None) -> int:
        """Send what was held in a conversation (`user_id`: only what was held for that member of a group chat
        or channel): one item as is, several as one digest. Returns rows released."""
        await self._scheduler.cancel(key=hold_key(conversation_id, user_id))
        held = await self._store.held(conversation_id, user_id=user_id)
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
                target_user_id=user_id, tenant_id=first.tenant_id, category="digest",
                priority=max(r.priority for r in held),
            )])
            await self._store.set_status([r.id for r in held], "merged", only_from=["held"],
                                         note=f"delivered in digest {digest.id}")
            self._worker.submit(await self._store.get_many([digest.id]))
        self.counts["released"] += len(held)
        log.info("released %d held item(s) in %s%s", len(held), conversation_id, f" for {user_id}" if user_id else "")
        return len(held)

    async def _release_overdue(self, job: object) -> None:
        """HOLD_MAX_SECONDS passed mid-topic: deliver, then re-ask the pending question."""
        payload = getattr(job, "payload", {})
        conversation_id, user_id = str(payload.get("conversation_id", "")), payload.get("user_id")
        if not conversation_id:
            return
        if user_id:
            user_id = str(user_id)
            prompt = await self._engagement.member_prompt(conversation_id, user_id)
            in_topic = await self._engagement.member_in_topic(conversation_id, user_id)
        else:
            prompt = await self._engagement.pending_prompt(conversation_id)
            in_topic = await self._engagement.state(conversation_id) == "in_topic"
        await self.release(conversation_id, user_id, resume_prompt=prompt if in_topic else None)

    async def conversation_removed(self, conversation_id: str) -> None:
        """The bot was uninstalled: nothing more goes there until it is installed again."""
        await self._engagement.fire(conversation_id, "removed")
        await self._engagement.forget_welcome(conversation_id)
        await self._engagement.forget_members(conversation_id)
        await self._scheduler.cancel(key=hold_key(conversation_id))
        cancelled = await self._store.cancel_conversation(conversation_id, "the bot was removed")
        self._worker.cancel(cancelled)
