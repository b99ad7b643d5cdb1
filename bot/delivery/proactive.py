"""The one door every proactive message goes through: policy, then the durable outbox, then the worker.

Each item consults the engagement policy first (state/engagement.py): deliver now, hold, or drop (muted
notifications, unreachable conversations). An item is held until the user's topic ends: in a personal chat
the user's open topic holds everything; in a group chat or channel only items addressed to one person (their
alert, their result) wait, and only for that person's topic, while items for the whole conversation go out at
once. Non-urgent notifications also wait for the user's quiet hours to end or their daily digest
(`NotificationSettings`): such a row keeps its release time in `not_before`, and one scheduler job per
conversation (`deferred:` key) releases it. Held items about the same subject supersede each other; several
released together go out as ONE digest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from bot.access import AllowedTenants
from bot.metrics import Metrics
from scheduler.jobs import JobState
from scheduler.scheduler import Scheduler
from state.clock import Clock
from state.engagement import Decision, Engagement, decide
from state.model import (
    DAILY_DIGEST,
    GROUP_SCOPES,
    QUIET_HOURS,
    NotificationSettings,
    conversation_key,
    conversation_subject,
    deferred_key,
    hold_key,
    release_time,
    user_subject,
)
from state.outbox import OutboxItem, OutboxRow, OutboxStore, Writes
from state.preferences import Preferences
from state.reach import PARKED
from state.references import ConversationRecord, ConversationReferences

from .digest import DEFAULT_MAX_BYTES, digest_payloads, reason_of
from .worker import DeliveryWorker

log = logging.getLogger(__name__)

RELEASE_OVERDUE = "engagement.release_overdue"
RELEASE_DEFERRED = "delivery.release_deferred"
_STATUS: dict[str, Literal["pending", "held", "dropped"]] = {"deliver": "pending", "hold": "held", "drop": "dropped"}


@dataclass
class _Target:
    """What the policy needs to know about one item's destination."""

    conversation_id: str | None = None  # the conversation (a channel, never one of its threads), if known
    subjects: list[str] = field(default_factory=list)  # whose mutes apply
    schedule: list[str] = field(default_factory=list)  # whose quiet hours and digest apply (see `_schedule`)
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
        max_message_bytes: int = DEFAULT_MAX_BYTES,
        metrics: Metrics | None = None,
        tenants: AllowedTenants | None = None,
    ) -> None:
        self._tenants = tenants or AllowedTenants()  # ALLOWED_TENANTS: nothing goes to another tenant
        self._store = store
        self._worker = worker
        self._references = references
        self._engagement = engagement
        self._preferences = preferences
        self._scheduler = scheduler
        self._clock = clock
        self._hold_max = hold_max_seconds
        self._max_bytes = max_message_bytes
        self._metrics = metrics or worker.metrics
        engagement.on_topic_ended(self.release)
        worker.gate = self.admit
        scheduler.register(RELEASE_OVERDUE, self._release_overdue)
        scheduler.register(RELEASE_DEFERRED, self._release_deferred)

    async def _decisions(self, items: Sequence[OutboxItem]) -> list[tuple[Decision, _Target, float | None]]:
        """The policy's answer for each item, where it goes, and for a deferred item when it may go out;
        lookups batched."""
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
                target.schedule = list(target.subjects)  # a 1:1 chat: the person's; else the conversation's
                if item.target_user_id:  # addressed to one person in this conversation
                    target.subjects.append(user_subject(item.target_user_id))
                    target.member = item.target_user_id if target.group else None
            elif item.target_user_id:  # rare: a user without a known 1:1 chat
                user_id = await self._references.teams_user_id(item.target_user_id) or item.target_user_id
                target.subjects.append(user_subject(user_id))
                target.schedule = list(target.subjects)
                personal = [r for r in await self._references.for_user(user_id) if r.conversation_type == "personal"]
                target.conversation_id = personal[0].conversation_id if personal else None
            targets.append(target)
        states = await self._engagement.states(t.conversation_id for t in targets if t.conversation_id)
        in_topic = await self._engagement.members_in_topic(
            (t.conversation_id, t.member) for t in targets if t.conversation_id and t.member)
        notifications = [t.subjects for t, item in zip(targets, items, strict=True) if item.category == "notification"]
        muted = await self._preferences.muted(s for subjects in notifications for s in subjects)
        settings = await self._preferences.settings_of(s for subjects in notifications for s in subjects)
        now = self._clock.now()
        decisions: list[tuple[Decision, _Target, float | None]] = []
        for target, item in zip(targets, items, strict=True):
            state = states.get(target.conversation_id, "idle") if target.conversation_id else "idle"
            if target.group and state != "inactive":  # there, only the addressee's own topic holds an item
                state = "in_topic" if (target.conversation_id, target.member) in in_topic else "idle"
            muted_here = item.category == "notification" and any(s in muted for s in target.subjects)
            plan = None
            if item.category == "notification" and item.priority <= 0:
                plan = release_time(now, _schedule(settings, target.schedule))
            decision = decide(state, category=item.category, urgent=item.priority > 0, muted=muted_here,
                              deferred=plan[1] if plan else None)
            deferred_until = plan[0].timestamp() if plan and decision.reason == plan[1] else None
            if decision.action == "hold" and target.conversation_id is None:
                # No 1:1 chat to hold it in (someone known only from a group chat): nothing would release it. It
                # goes when the wait is over (quiet hours, digest: deferred_until), the worker opening the chat.
                decision = Decision("deliver", decision.reason)
            record = records.get(target.conversation_id or "")
            if not self._tenants.allows(item.tenant_id or (record.tenant_id if record else None)):
                decision, deferred_until = Decision("drop", "the bot does not serve this tenant"), None
            decisions.append((decision, target, deferred_until))
        return decisions

    async def enqueue(self, items: Sequence[OutboxItem], *, also: Writes | None = None) -> list[Admission]:
        """Apply the policy, commit the rows in one transaction, then wake the worker for those that may go now.

        `also`: the caller's own writes, committed in the same transaction as the rows (see OutboxStore)."""
        if not items:
            return []
        decisions = await self._decisions(items)
        decided = [replace(item, status=_STATUS[d.action],
                           note=d.reason if d.action == "drop" or until is not None else item.note,
                           not_before=until if until is not None else item.not_before)
                   for item, (d, _, until) in zip(items, decisions, strict=True)]
        results = await self._store.enqueue(decided, also=also)
        now = self._clock.now().timestamp()
        admissions, deliver = [], []
        for item, (decision, target, until), result in zip(decided, decisions, results, strict=True):
            admissions.append(Admission(result.id, result.created, decision))
            if not result.created:
                continue
            if decision.action != "deliver":  # delivered ones are counted as queued by the worker
                self._metrics.message(item.category, "held" if decision.action == "hold" else "dropped")
            if decision.action == "deliver":
                deliver.append(item.as_row(result.id, now))
            elif decision.action == "hold" and target.conversation_id:
                await self._hold(result.id, target, item, deferred_until=until)
            else:
                log.info("dropped a %s for %s: %s", item.category, target.conversation_id or item.target_user_id,
                         decision.reason)
        await self._worker.offer(deliver)
        return admissions

    async def admit(self, rows: Sequence[OutboxRow]) -> list[OutboxRow]:
        """The policy for broadcast rows about to go (claimed by the worker; `undecided`): those that may go
        now are returned (with the rows that were decided before); the others are held (mid-topic, quiet
        hours, digest: released like any held row) or dropped (muted), each with its reason."""
        undecided = [r for r in rows if r.undecided]
        if not undecided:
            return list(rows)
        items = [OutboxItem(payload=r.payload, conversation_id=r.conversation_id, target_user_id=r.target_user_id,
                            tenant_id=r.tenant_id, category=r.category, subject=r.subject, priority=r.priority,
                            expires_at=r.expires_at) for r in undecided]
        decisions = await self._decisions(items)
        held: list[tuple[OutboxRow, OutboxItem, _Target, float | None, str | None]] = []
        dropped: list[tuple[int, str]] = []
        later: list[tuple[int, str | None, float | None]] = []  # no chat to wait in: pending until `until`
        stopped: set[int] = set()
        now = self._clock.now().timestamp()
        for row, item, (decision, target, until) in zip(undecided, items, decisions, strict=True):
            if decision.action == "hold" and target.conversation_id:
                held.append((row, item, target, until, decision.reason if until is not None else None))
            elif decision.action == "drop":
                dropped.append((row.id, decision.reason))
            elif until is not None and until > now:  # quiet hours or digest, and no 1:1 chat yet (see _decisions)
                later.append((row.id, decision.reason, until))
            else:
                continue
            stopped.add(row.id)
        if not stopped:
            return list(rows)
        await self._store.settle_undecided([(r.id, note, until) for r, _, _, until, note in held] + later, dropped)
        if later:  # they wait as pending rows due at `until` (held ones would need a chat to be released from)
            await self._store.set_status([row_id for row_id, _, _ in later], "pending", only_from=("held",))
        for row, item, target, until, _ in held:
            self._metrics.message(row.category, "held")
            await self._hold(row.id, target, item, deferred_until=until)
        for _ in dropped:
            self._metrics.message("notification", "dropped")
        return [r for r in rows if r.id not in stopped]

    async def _hold(self, row_id: int, target: _Target, item: OutboxItem, *,
                    deferred_until: float | None = None) -> None:
        conversation_id, member = target.conversation_id, target.member
        assert conversation_id is not None
        if item.conversation_id is None:  # a user-targeted item waits in the user's 1:1 chat
            await self._store.retarget(row_id, conversation_id)
        if item.subject:
            superseded = await self._store.supersede(conversation_id, item.subject, keep=row_id,
                                                     user_id=item.target_user_id)
            self._metrics.message(item.category, "superseded", superseded)
        if deferred_until is not None:
            await self._plan_release(conversation_id, deferred_until)
        else:
            await self._hold_at_most(conversation_id, member)

    async def _hold_at_most(self, conversation_id: str, member: str | None = None) -> None:
        """Mid-topic holds end after HOLD_MAX_SECONDS at the latest (in a group chat or channel: per member)."""
        key = hold_key(conversation_id, member)
        job = await self._scheduler.get(key=key)
        if job is None or job.state is JobState.DEAD:
            await self._scheduler.schedule_in(
                self._hold_max, RELEASE_OVERDUE, {"conversation_id": conversation_id, "user_id": member}, key=key
            )

    async def start(self) -> None:
        """Every held row has a job that will release it (a crash between holding a row and scheduling its
        release, or a release job that died, would otherwise leave it waiting for a topic that never ends)."""
        held = await self._store.held()
        groups = {key for key, record in (await self._references.get_many(
            {r.conversation_id for r in held if r.conversation_id})).items()
            if record.conversation_type in GROUP_SCOPES}
        orphans = [r.id for r in held if not r.conversation_id and r.last_error != PARKED]  # (PARKED: bot/reach
        # lets those go once the app is installed for their person)
        if orphans:  # held with no chat to wait in (older versions did that): they go, the worker opens the chat
            await self._store.set_status(orphans, "pending", only_from=("held",))
            await self._worker.offer([r for r in await self._store.get_many(orphans) if r.status == "pending"])
            log.info("%d held notification(s) had no conversation to wait in; they go now", len(orphans))
        for row in held:
            if not row.conversation_id:
                continue
            if row.last_error in (QUIET_HOURS, DAILY_DIGEST):
                await self._plan_release(row.conversation_id, row.not_before)
            else:
                member = row.target_user_id if row.conversation_id in groups else None
                await self._hold_at_most(row.conversation_id, member)

    async def _plan_release(self, conversation_id: str, at: float) -> None:
        """The conversation's deferred-release job runs at `at` (or earlier, if it already was due earlier)."""
        key = deferred_key(conversation_id)
        job = await self._scheduler.get(key=key)
        if job is None or job.due_at.timestamp() > at or job.state != "pending":
            await self._scheduler.schedule_at(datetime.fromtimestamp(at, UTC), RELEASE_DEFERRED,
                                              {"conversation_id": conversation_id}, key=key)

    async def release(self, conversation_id: str, user_id: str | None = None, *,
                      resume_prompt: str | None = None) -> int:
        """The topic ended (or overran): send what was held in the conversation for it and is due (`user_id`:
        only what was held for that member of a group chat or channel), one item as is, several as one
        digest. Items waiting for quiet hours to end or for the daily digest stay held. Returns rows released."""
        await self._scheduler.cancel(key=hold_key(conversation_id, user_id))
        now = self._clock.now().timestamp()
        held = [r for r in await self._store.held(conversation_id, user_id=user_id) if r.not_before <= now]
        return await self._send_held(conversation_id, held, resume_prompt=resume_prompt, user_id=user_id)

    async def _send_held(self, conversation_id: str, held: list[OutboxRow], *,
                         resume_prompt: str | None = None, user_id: str | None = None) -> int:
        """Send these held rows: one as is, several (or any a schedule held) as one digest."""
        if not held:
            return 0

        def digests(taken: list[OutboxRow]) -> list[OutboxItem] | None:
            reason = reason_of(taken)
            if len(taken) == 1 and resume_prompt is None and reason is None:
                return None  # one item goes out as it was
            payloads = digest_payloads(taken, resume_prompt=resume_prompt, reason=reason, max_bytes=self._max_bytes)
            return [OutboxItem(payload=payload, conversation_id=conversation_id, target_user_id=user_id,
                               tenant_id=taken[0].tenant_id, category="digest",
                               priority=max(r.priority for r in taken)) for payload in payloads]

        held, digest_rows = await self._store.release_held(held, digests)  # atomic: a racing release gets none
        if not held:
            return 0
        await self._worker.offer(digest_rows or held)
        for row in held:
            self._metrics.message(row.category, "released")
        log.info("released %d held item(s) in %s%s", len(held), conversation_id, f" for {user_id}" if user_id else "")
        return len(held)

    async def _release_deferred(self, job: object) -> None:
        conversation_id = str(getattr(job, "payload", {}).get("conversation_id", ""))
        if conversation_id:
            await self.release_deferred(conversation_id)

    async def release_deferred(self, conversation_id: str) -> int:
        """Quiet hours ended or the digest is due: send what is due now as one digest, plan the rest.

        What is due also follows the conversation's settings now: turning quiet hours or the digest off (or
        moving them earlier) releases sooner. Mid-topic nothing interrupts: the topic's end releases it."""
        held = await self._store.held(conversation_id)
        settings = await self._settings_for(conversation_id)
        now = self._clock.now().timestamp()

        def release_at(row: OutboxRow) -> float:
            """The planned time, or earlier if the settings now would have planned it earlier on arrival."""
            plan = release_time(datetime.fromtimestamp(row.created_at, UTC), settings)
            return min(row.not_before, plan[0].timestamp() if plan else row.created_at)

        due = [r for r in held if release_at(r) <= now]
        later = [release_at(r) for r in held if release_at(r) > now]
        if later:
            await self._plan_release(conversation_id, min(later))
        elif (job := await self._scheduler.get(key=deferred_key(conversation_id))) and job.state == "pending":
            await self._scheduler.cancel(key=deferred_key(conversation_id))  # nothing is waiting any more
        if not due:
            return 0
        if await self._engagement.state(conversation_id) == "in_topic":
            await self._hold_at_most(conversation_id)
            return 0
        # in a group chat or channel, what is addressed to a member who is mid-topic waits for that topic
        busy = await self._engagement.members_in_topic(
            (conversation_id, r.target_user_id) for r in due if r.target_user_id)
        for member in sorted({user for _, user in busy}):
            await self._hold_at_most(conversation_id, member)
        return await self._send_held(
            conversation_id, [r for r in due if (conversation_id, r.target_user_id) not in busy])

    async def _settings_for(self, conversation_id: str) -> NotificationSettings:
        record = await self._references.get(conversation_id)
        subjects = [conversation_subject(conversation_id)]
        if record is not None and record.conversation_type == "personal" and record.user_id:
            subjects.append(user_subject(record.user_id))
        return _schedule(await self._preferences.settings_of(subjects), subjects)

    async def replan(self, subject: str) -> None:
        """A subject's time zone, quiet hours or digest changed: re-plan what its conversations hold."""
        if subject.startswith("user:"):
            records: list[ConversationRecord] = await self._references.for_user(subject.removeprefix("user:"))
            conversations = [r.conversation_id for r in records if r.conversation_type == "personal"]
        else:
            conversations = [subject.removeprefix("conversation:")]
        for conversation_id in conversations:
            await self.release_deferred(conversation_id)

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
        await self._scheduler.cancel(key=deferred_key(conversation_id))
        cancelled = await self._store.cancel_conversation(conversation_id, "the bot was removed")
        self._worker.cancel(list(cancelled))
        for category in cancelled.values():
            self._metrics.message(category, "cancelled")


def _schedule(settings: dict[str, NotificationSettings], subjects: Sequence[str]) -> NotificationSettings:
    """Whose quiet hours and digest apply: the person's in a 1:1 chat, else the conversation's."""
    for subject in reversed(subjects):  # user subjects come after the conversation's
        if subject in settings:
            return settings[subject]
    return NotificationSettings()
