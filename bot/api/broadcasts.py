"""Broadcasts: the back half of POST /api/notify, from a committed intent to recipient rows.

`accept` records the broadcast (what is said, once; to whom) and, in the same transaction, the scheduler
job that expands it, then answers. A small request (at most `INLINE_TARGETS` targets) is expanded at once,
through the policy like any proactive message, so its answer lists every row and what the policy did.
A larger one is expanded by the job, page by page (`page` conversations, or `list_page` entries of a list,
per transaction; see state/broadcasts.py for why a crash neither loses nor repeats a page), yielding to
the event loop between pages; a run writes at most `pages_per_run` pages and then hands over to a fresh
run of the same job, so no run outlives its lease. Those rows are `undecided`: the engagement policy
(mid-topic, quiet hours, mute, digest) decides for each when the delivery worker is about to send it
(ProactiveMessages.admit).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bot.access import AllowedTenants
from bot.delivery.proactive import ProactiveMessages
from bot.delivery.worker import DeliveryWorker
from bot.notices.acknowledge import with_acknowledge
from bot.reach.groups import GroupPages, Later
from bot.reach.team import TeamPages
from scheduler.jobs import Job
from scheduler.scheduler import Scheduler
from state.broadcasts import Broadcast, BroadcastStore
from state.clock import Clock, SystemClock
from state.db import Connection
from state.outbox import OutboxItem, OutboxStore
from state.references import ConversationReferences

from .notify import Notification, recipient, resolve_targets

log = logging.getLogger(__name__)

EXPAND = "notify.expand"
INLINE_TARGETS = 100  # a request resolving to at most this many targets is expanded at once, ids answered


def expansion_key(broadcast_id: int) -> str:
    return f"broadcast:{broadcast_id}"


@dataclass
class Accepted:
    """The 202's figures: what is known when the answer goes (everything, for an inline broadcast)."""

    batch_id: str
    expanded: bool
    scheduled: bool = False
    queued: int = 0
    held: int = 0
    muted: int = 0
    duplicates: int = 0
    ids: list[int] | None = None
    unknown_users: list[str] = field(default_factory=list)
    unknown_conversations: list[str] = field(default_factory=list)
    inactive_conversations: list[str] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "batchId": self.batch_id,
            "state": "scheduled" if self.scheduled else "expanded" if self.expanded else "expanding",
            "queued": self.queued, "held": self.held, "muted": self.muted, "duplicates": self.duplicates,
            "unknown": {"users": self.unknown_users, "conversations": self.unknown_conversations},
            "inactive": {"conversations": self.inactive_conversations},
        }
        if self.ids is not None:
            body["ids"] = self.ids
        return body


class Broadcasts:
    """Accepts notify requests as broadcasts and expands them (a scheduler job per broadcast)."""

    def __init__(self, store: BroadcastStore, outbox: OutboxStore, references: ConversationReferences,
                 proactive: ProactiveMessages, worker: DeliveryWorker, scheduler: Scheduler, *,
                 tenants: AllowedTenants | None = None, page: int = 1000, list_page: int = 500,
                 pages_per_run: int = 20, clock: Clock | None = None, team_pages: TeamPages | None = None,
                 group_pages: GroupPages | None = None) -> None:
        self._group_pages = group_pages  # Entra groups' members from Graph, page by page (bot/reach/groups.py)
        self._team_pages = team_pages  # a team's roster, page by page (bot/reach/team.py)
        self._store = store
        self._outbox = outbox
        self._references = references
        self._proactive = proactive
        self._worker = worker
        self._scheduler = scheduler
        self._clock = clock or SystemClock()
        self._tenants = tenants or AllowedTenants()  # ALLOWED_TENANTS: a target elsewhere is not one
        self.page = page  # conversations per page of a broadcast to everyone
        self.list_page = list_page  # entries of a list per page
        self.pages_per_run = pages_per_run  # pages per run of the job
        scheduler.register(EXPAND, self._expand_job)

    def _clock_now(self) -> float:
        return self._clock.now().timestamp()

    async def get(self, public_id: str) -> Broadcast | None:
        return await self._store.get(public_id)

    async def start(self) -> None:
        """Every broadcast still expanding has its job (a crash between the intent and its job, or a job that
        died, would otherwise leave it half-written). A job that is there, even one a dead process was
        running, is left to the scheduler: it runs again when its lease expires."""
        for broadcast_id in await self._store.expanding():
            job = await self._scheduler.get(key=expansion_key(broadcast_id))
            if job is None or job.state == "dead":
                await self._scheduler.schedule_in(0, EXPAND, {"broadcast": broadcast_id},
                                                  key=expansion_key(broadcast_id))
        now = self._clock_now()
        for broadcast_id, send_at in await self._store.scheduled():  # its job goes at its time
            job = await self._scheduler.get(key=expansion_key(broadcast_id))
            if job is None or job.state == "dead":
                await self._scheduler.schedule_in(max(0.0, send_at - now), EXPAND, {"broadcast": broadcast_id},
                                                  key=expansion_key(broadcast_id))

    async def accept(self, note: Notification) -> Accepted:
        """Record the broadcast and answer: expanded at once when small, else by its job."""
        public_id = uuid.uuid4().hex
        if note.acknowledge:  # its button names the batch
            note = replace(note, payload=with_acknowledge(note.payload, public_id))
        listed = len(note.users) + len(note.conversations)
        first: list[tuple[str, str | None]] = []
        if note.target_all:
            first = await self._references.reachable(limit=INLINE_TARGETS + 1)
        inline = len(first) <= INLINE_TARGETS if note.target_all else listed <= INLINE_TARGETS
        inline = inline and note.send_at is None  # a scheduled notice is written by its job, at its time
        wait = 0.0 if note.send_at is None else max(0.0, note.send_at - self._clock_now())
        audience: dict[str, Any] = {"all": True} if note.target_all else {"team": note.team} if note.team else {
            "groups": note.groups, "includeGuests": note.include_guests} if note.groups else {
            "users": note.users, "conversations": note.conversations}
        if note.channels_only:
            audience["channelsOnly"] = True
        if note.tenant_id:  # listed AAD ids the bot has not met are reached in this tenant (bot/reach)
            audience["tenantId"] = note.tenant_id
        if note.team or note.groups:  # a roster or a group is read page by page, always by the job (bot/reach)
            inline = False
        async with self._scheduler.staging() as stage:

            async def expand_later(tx: Connection, broadcast_id: int) -> None:
                if not inline:
                    await stage.schedule_in(tx, wait, EXPAND, {"broadcast": broadcast_id},
                                            key=expansion_key(broadcast_id))

            broadcast_id = await self._store.create(
                public_id, audience, note.payload, priority=note.priority, expires_at=note.expires_at,
                dedup_key=note.dedup_key, send_at=note.send_at, also=expand_later)
        if note.send_at is not None:
            log.info("broadcast %s scheduled in %.0f s", public_id, wait)
            return Accepted(public_id, expanded=False, scheduled=True)
        if not inline:
            log.info("broadcast %s accepted: its recipients are being written", public_id)
            return Accepted(public_id, expanded=False)
        return await self._expand_now(broadcast_id, public_id, note, first)

    async def _expand_now(self, broadcast_id: int, public_id: str, note: Notification,
                          everyone: list[tuple[str, str | None]]) -> Accepted:
        """A small broadcast, written at once through the policy (its answer lists each row)."""
        if note.target_all:
            items = [recipient(note, c, t, broadcast_id=broadcast_id) for c, t in everyone
                     if self._tenants.allows(t)]
            unknown_users: list[str] = []
            unknown_conversations: list[str] = []
            inactive: list[str] = []
        else:
            resolved = await resolve_targets(note, self._references, self._tenants, broadcast_id=broadcast_id)
            items = resolved.items
            unknown_users, unknown_conversations = resolved.unknown_users, resolved.unknown_conversations
            inactive = resolved.inactive_conversations
        reached = await self._store.reached(broadcast_id, note.dedup_key, items)
        fresh = [item for n, item in enumerate(items) if n not in reached]

        async def written(tx: Connection) -> None:
            await self._store.advance(tx, broadcast_id, cursor="", resolved=len(items),
                                      unknown=len(unknown_users) + len(unknown_conversations), inactive=len(inactive),
                                      done=True)

        admissions = iter(await self._proactive.enqueue(fresh, also=written) if fresh else [])
        accepted = Accepted(public_id, expanded=True, duplicates=len(reached), ids=[],
                            unknown_users=unknown_users, unknown_conversations=unknown_conversations,
                            inactive_conversations=inactive)
        assert accepted.ids is not None
        if not fresh:
            await self._store.finish(broadcast_id, resolved=len(items),
                                     unknown=len(unknown_users) + len(unknown_conversations), inactive=len(inactive))
        for n in range(len(items)):
            if n in reached:
                accepted.ids.append(reached[n])
                continue
            admission = next(admissions)
            accepted.ids.append(admission.id)
            if not admission.created:
                accepted.duplicates += 1
            elif admission.decision.action == "deliver":
                accepted.queued += 1
            elif admission.decision.action == "hold":
                accepted.held += 1
            else:
                accepted.muted += 1
        return accepted

    # -- the expansion job -------------------------------------------------------------------------

    async def _expand_job(self, job: Job) -> None:
        broadcast_id = int(job.payload.get("broadcast", 0))
        await self._store.release(broadcast_id)  # a scheduled broadcast's time came (else nothing changes)
        for n in range(self.pages_per_run):
            try:
                if await self.expand_page(broadcast_id, first=n == 0):
                    return
            except Later as later:  # Graph's Retry-After: the same cursor, then
                log.info("broadcast %d: expansion deferred %.1f s: %s", broadcast_id, later.seconds, later)
                await self._scheduler.schedule_in(later.seconds, EXPAND, {"broadcast": broadcast_id},
                                                  key=expansion_key(broadcast_id))
                return
            await asyncio.sleep(0)  # let turns and sends in between pages
        await self._scheduler.schedule_in(0, EXPAND, {"broadcast": broadcast_id}, key=expansion_key(broadcast_id))

    async def expand_page(self, broadcast_id: int, *, first: bool = False) -> bool:
        """Write the next page of a broadcast's recipients; True when all are written (or it is gone)."""
        broadcast = await self._store.get_by_id(broadcast_id)
        if broadcast is None or broadcast.state != "expanding":
            return True
        if broadcast.audience.get("all"):
            page = await self._store.expand_all_page(broadcast_id, self.page, tenants=self._tenants.names or None)
            done, written = page.done, page.written
        elif broadcast.audience.get("team") and self._team_pages is not None:
            done, written = await self._team_pages.next_page(broadcast)
        elif broadcast.audience.get("groups") and self._group_pages is not None:
            done, written = await self._group_pages.next_page(broadcast)
        else:
            done, written = await self._list_page_of(broadcast)
        if written:
            if first:
                self._worker.request_maintenance()  # take over the tenants nobody sends for yet
            await self._outbox.announce("*")
        if done:
            log.info("broadcast %s: all recipients written", broadcast.public_id)
            await self._store.expanded(broadcast.targets + written)
        return done

    async def _list_page_of(self, broadcast: Broadcast) -> tuple[bool, int]:
        """The next `list_page` entries of a broadcast to listed conversations, then users."""
        entries = [("c", c) for c in broadcast.audience.get("conversations") or []] + [
            ("u", u) for u in broadcast.audience.get("users") or []]
        start = int(broadcast.cursor or 0)
        chunk = entries[start:start + self.list_page]
        end = start + len(chunk)
        note = Notification(payload=broadcast.payload, conversations=[v for k, v in chunk if k == "c"],
                            users=[v for k, v in chunk if k == "u"], dedup_key=broadcast.dedup_key,
                            channels_only=bool(broadcast.audience.get("channelsOnly")),
                            tenant_id=broadcast.audience.get("tenantId"),
                            priority=broadcast.priority, expires_at=broadcast.expires_at)
        resolved = await resolve_targets(note, self._references, self._tenants, broadcast_id=broadcast.id,
                                         undecided=True)
        results, _ = await self._store.write_page(
            broadcast.id, _compact(resolved.items), cursor=str(end), resolved=len(resolved.items),
            unknown=len(resolved.unknown_users) + len(resolved.unknown_conversations),
            inactive=len(resolved.inactive_conversations), done=end >= len(entries))
        return end >= len(entries), sum(1 for r in results if r.created)


def _compact(items: Sequence[OutboxItem]) -> list[OutboxItem]:
    """Broadcast rows carry no payload of their own (their broadcast has it)."""
    return [replace(item, payload={}) for item in items]
