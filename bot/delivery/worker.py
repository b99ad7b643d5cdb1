"""The delivery worker: sends outbox rows to Teams within its limits, retries right, loses nothing.

One loop task picks what may go now from the SendQueue, runs each send as a tracked task (at most
`max_in_flight` at once, one per conversation), and waits on a single timer for the next one. Outcomes
are buffered and written to the outbox in batches; `flush()` writes them now.

Supervised: a database error while writing outcomes keeps them (in order) and retries with backoff (at most
2 s; at once when the database is back: `database_back`); the database being away while looking up where a row
goes retries that row later without using an attempt, while any other error there or in a send (a bug) uses an
attempt and logs its traceback once. Neither ends delivery, loses an outcome or strands a row in memory.
`health()` reports delivery as stuck when outcomes have waited to be written for over `stuck_after_s` (the
/healthz 503).

Replicas: a row is sent only by the replica that claimed it (`claimed_by`, with a lease renewed while it
waits here), and a replica claims only rows of the tenants it owns (ownership.py). Rows queued here are
offered (`offer`): claimed at once if this replica owns their tenant, else announced so the owner claims
them. A periodic `maintain()` heartbeats, takes over tenants (and a dead replica's rows once their claims
expire), hands tenants over, renews claims and claims more.
A turn's replies take their send slots from the same queue and limits (`acquire_reply_slot` /
`release_reply_slot`), so replies and proactive sends share one budget per conversation and tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn, Protocol

from bot.logs import log_context
from bot.metrics import Metrics
from scheduler.sendqueue import SendQueue, Ticket
from state.availability import is_unavailable, reason
from state.clock import Clock, backoff_s
from state.model import conversation_key as channel_of
from state.outbox import REPLY_PRIORITY, OutboxRow, OutboxStore, Outcome
from state.references import ConversationRecord, ConversationReferences

from .failures import SendFailure
from .ownership import Ownership, tenant_key
from .pacing import LoopPacing

log = logging.getLogger(__name__)

_REPLY_TICKETS = 1 << 62  # ids of a turn's reply tickets: after every outbox row of the same priority
_FLUSH_RETRY_MAX_S = 2.0  # outcomes unwritten (the database away) are retried at least this often


class Limiter(Protocol):
    """What the worker tells the rate limiter beyond what the send queue asks (scheduler/ratelimit.py)."""

    def penalize(self, conversation_id: str, tenant_id: str | None, retry_after: float) -> None: ...

    def remember(self, conversation_id: str, tenant_id: str | None, ago_s: float) -> None: ...

    @property
    def history_s(self) -> float: ...


class NewPeople(Protocol):
    """A way to people no conversation reference knows (bot/reach/people.py)."""

    def reachable(self, row: OutboxRow) -> bool: ...

    async def open_chat(self, row: OutboxRow) -> ConversationRecord: ...

    async def parked(self, row: OutboxRow) -> None: ...


class Sender(Protocol):
    """The outbound Bot Connector calls (bot/teams/sender.py); failures raise `SendFailure`."""

    async def send(self, service_url: str, conversation_id: str, payload: dict[str, Any]) -> str: ...

    async def update(self, service_url: str, conversation_id: str, activity_id: str,
                     payload: dict[str, Any]) -> str: ...

    async def open_personal_chat(self, service_url: str, tenant_id: str | None, bot_id: str, user_id: str) -> str: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (Teams' guidance), bounded attempts; Retry-After wins on 429."""

    max_attempts: int = 6
    base_s: float = 2.0
    cap_s: float = 300.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return retry_after
        return rng.uniform(self.base_s / 2, backoff_s(attempt, self.base_s, self.cap_s))


def conversation_key(row: OutboxRow) -> str:
    """Whose limits a send counts against: its conversation's (the threads of a channel share the channel's
    budget, the conservative reading of Teams' per-thread limits), or a user's 1:1 chat still to be opened."""
    return channel_of(row.conversation_id) if row.conversation_id else f"user:{row.target_user_id}"


class DeliveryWorker:
    def __init__(
        self,
        store: OutboxStore,
        references: ConversationReferences,
        sender: Sender,
        queue: SendQueue,
        clock: Clock,
        *,
        limiter: Limiter | None = None,
        retry: RetryPolicy | None = None,
        max_in_flight: int = 64,
        flush_every: int = 512,
        flush_interval_s: float = 0.1,
        stuck_after_s: float = 30.0,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        ownership: Ownership | None = None,
        claim_batch: int = 1000,
        new_people: NewPeople | None = None,
    ) -> None:
        self._store = store
        self._references = references
        self._sender = sender
        self._queue = queue
        self._clock = clock
        self._limiter = limiter
        self._retry = retry or RetryPolicy()
        self._max_in_flight = max_in_flight
        self.pacing = LoopPacing(max_in_flight)  # fewer sends in flight while the loop lags (turns come first)
        self._flush_every = flush_every
        self._flush_interval = flush_interval_s
        self._rng = rng or random.Random()
        self._rows: dict[int, OutboxRow] = {}
        self._sent_ids: OrderedDict[int, str] = OrderedDict()  # recent row id → Teams activity id
        self._in_flight: set[asyncio.Task[None]] = set()
        self._broadcast_sends: dict[asyncio.Task[None], int] = {}  # sends in flight of a broadcast's rows
        self._stopped: OrderedDict[int, None] = OrderedDict()  # cancelled broadcasts: their rows start no send
        self._outcomes: list[Outcome] = []
        self._writing: list[Outcome] = []  # the outcomes `flush` is writing now
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._stopping = False
        self._stuck_after = stuck_after_s
        self._unflushed_since: float | None = None  # monotonic time of the oldest outcome not yet written
        self._flush_failures = 0
        self._flush_retry_at = 0.0
        self._last_error: str | None = None
        self.metrics = metrics or Metrics()
        self.ownership = ownership or Ownership(None, "local", clock)
        self._claim_batch = claim_batch
        self._new_people = new_people
        self._claim_wanted = False  # a notification or a drained queue: claim more on the next pass
        self._to_acquire: set[str] = set()  # announced tenants nobody owns that this replica should
        self._leaving: set[str] = set()  # tenants being handed over: no new sends, release when none in flight
        self._in_flight_tenants: dict[str, int] = {}
        self._maintenance: asyncio.TimerHandle | None = None
        self._maintenance_due = False
        self._reply_ids = itertools.count(_REPLY_TICKETS)
        self._reply_grants: dict[int, asyncio.Future[None]] = {}  # reply ticket id → the waiting turn
        self.gate: Callable[[Sequence[OutboxRow]], Awaitable[list[OutboxRow]]] | None = None
        """The policy for claimed broadcast rows not decided yet (ProactiveMessages.admit): which may go now."""
        self._bugs_logged: set[str] = set()  # unexpected send errors whose traceback is in the log already
        store.subscribe(self._announced)

    @property
    def counts(self) -> dict[str, int]:
        """Messages per outcome since start (from the metrics: one bookkeeping)."""
        return self.metrics.delivery_totals()

    # -- lifecycle -------------------------------------------------------------------------------

    async def load(self) -> int:
        """Claim what this replica may send now (at start-up, after a crash: its tenants' pending rows)."""
        await self.maintain()
        return len(self._rows)

    async def start(self) -> None:
        await self.load()
        self._loop_task = asyncio.create_task(self._run(), name="delivery-worker")
        self._arm_maintenance()
        self.pacing.start()

    def database_back(self) -> None:
        """The database answers again: write what waits, heartbeat, renew and claim now, not at the next step."""
        self._flush_retry_at = 0.0
        self._maintenance_due = True
        self._claim_wanted = True
        self._wake.set()

    def _arm_maintenance(self) -> None:
        if self._stopping:
            return
        self._maintenance = asyncio.get_running_loop().call_later(self.ownership.lease_s / 3, self._maintenance_tick)

    def request_maintenance(self) -> None:
        """Run `maintain()` on the next pass (e.g. rows of tenants nobody sends for yet were written)."""
        self._maintenance_due = True
        self._wake.set()

    def _maintenance_tick(self) -> None:
        self._maintenance_due = True
        self._wake.set()
        self._arm_maintenance()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking new sends, let in-flight ones finish (up to `timeout`), flush outcomes, hand the rows
        and tenants held back to the other replicas."""
        self._stopping = True
        self.pacing.stop()
        if self._maintenance is not None:
            self._maintenance.cancel()
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=timeout)
            for task in pending:
                task.cancel()  # its row stays pending in the database and is sent after restart
            if pending:
                await asyncio.wait(pending)
        if not await self.flush():
            log.error("stopping with %d delivery outcome(s) unwritten (%s); those rows are sent again after "
                      "restart", len(self._outcomes), self._last_error)
            return  # the claims expire; what was sent is sent again (the documented bound), nothing is lost
        try:
            await self._store.unclaim(self.ownership.replica_id, list(self._rows))
            await self.ownership.release()
        except Exception:  # the claims and leases expire on their own
            log.warning("could not hand claims and tenants back on stop", exc_info=True)
        self._rows.clear()

    # -- feeding ---------------------------------------------------------------------------------

    async def offer(self, rows: Sequence[OutboxRow]) -> None:
        """Rows just made pending here (queued, or released from a hold): claim and send those of tenants this
        replica owns (taking a tenant nobody owns if it should); tell the owners of the others."""
        pending = [r for r in rows if r.status == "pending"]
        if not pending:
            return
        tenants = {tenant_key(r.tenant_id) for r in pending}
        gained = await self.ownership.acquire(t for t in tenants if not self.ownership.owns(t))
        for tenant in gained:
            await self._took_over(tenant)
        mine = [r.id for r in pending if self.ownership.owns(tenant_key(r.tenant_id))
                and tenant_key(r.tenant_id) not in self._leaving]
        if mine:
            now = self._clock.now().timestamp()
            self.submit(await self._admit(await self._store.claim_ids(mine, self.ownership.replica_id,
                                                                      now + self.ownership.lease_s, now)))
        for tenant in tenants:
            if not self.ownership.owns(tenant) or tenant in self._leaving:
                await self._store.announce(tenant)

    def _announced(self, tenant: str) -> None:
        """A notification: rows of `tenant` wait to be claimed (or '*': anything may have been missed)."""
        if tenant == "*" or self.ownership.owns(tenant) or self.ownership.wants(tenant):
            if tenant != "*" and not self.ownership.owns(tenant):
                self._to_acquire.add(tenant)  # nobody sends for it yet and it should be this replica
            self._claim_wanted = True
            self._wake.set()

    async def maintain(self) -> None:
        """Heartbeat; renew leases and claims; take over the tenants this replica should own (a dead one's
        among them); hand over those another replica should own now; claim more rows."""
        await self.ownership.heartbeat()
        for tenant in await self.ownership.renew():  # lost (this replica was too slow): drop, do not send
            self._forget_tenant(tenant)
        now = self._clock.now().timestamp()
        with_work = await self._store.tenants_with_work(now)
        for tenant in await self.ownership.acquire(with_work):
            await self._took_over(tenant)
        for tenant in self.ownership.misplaced() - self._leaving:
            await self._hand_over(tenant)
        for tenant in list(self._leaving):
            if not self._in_flight_tenants.get(tenant):
                await self.ownership.release([tenant])
                self._leaving.discard(tenant)
        await self._store.renew_claims(self.ownership.replica_id, now + self.ownership.lease_s, self._held_ids())
        await self.claim_more()

    async def claim_more(self) -> int:
        """Claim pending rows of the owned tenants while few wait here; returns how many were claimed."""
        if self._to_acquire:
            wanted, self._to_acquire = self._to_acquire, set()
            for tenant in await self.ownership.acquire(wanted):
                await self._took_over(tenant)
        tenants = sorted(t for t in self.ownership.owned if t not in self._leaving) if not \
            self.ownership.standalone else sorted(await self._store.tenants_with_work(self._clock.now().timestamp()))
        if len(self._queue) >= self._claim_batch:
            return 0  # enough waits here; a wish to claim more (`_claim_wanted`) stands until it drains
        self._claim_wanted = False
        if not tenants:
            return 0
        now = self._clock.now().timestamp()
        rows = await self._store.claim(tenants, self.ownership.replica_id, now + self.ownership.lease_s, now,
                                       self._claim_batch)
        self.submit(await self._admit(rows))
        if rows:
            self._claim_wanted = True  # there may be more: claim again once these have gone
        return len(rows)

    async def _admit(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Claimed rows that may go now: the policy decides for broadcast rows it has not seen (`gate`). If it
        cannot (the database failed), the rows are handed back to be claimed again."""
        if self.gate is None or not any(r.undecided for r in rows):
            return rows
        try:
            return await self.gate(rows)
        except Exception as exc:
            self.metrics.database_error("worker")
            log.warning("could not apply the policy to %d claimed row(s), handing them back: %s", len(rows), exc)
            with contextlib.suppress(Exception):
                await self._store.unclaim(self.ownership.replica_id, [r.id for r in rows])
            return []

    async def _took_over(self, tenant: str) -> None:
        """This replica now sends for `tenant`: start its rate windows from the tenant's sends that still count
        in one (the last hour: Teams' hourly per-conversation window)."""
        if self._limiter is None:
            return
        now = self._clock.now().timestamp()
        for conversation_id, sent_at in await self._store.recent_sends(tenant, now - self._limiter.history_s):
            if conversation_id:
                self._limiter.remember(channel_of(conversation_id), tenant or None, now - sent_at)

    async def _hand_over(self, tenant: str) -> None:
        """Another replica should send for `tenant` now: stop starting its sends, give back what waits here;
        the lease goes once its sends in flight are answered (see `maintain`)."""
        self._leaving.add(tenant)
        ids = self._forget_tenant(tenant)
        if ids:
            await self._store.unclaim(self.ownership.replica_id, ids)

    def _held_ids(self) -> list[int]:
        """The rows whose claims this replica renews: queued or in flight here, or with an outcome not yet
        written (being written included)."""
        ids = set(self._rows)
        ids.update(o.id for o in self._outcomes)
        ids.update(o.id for o in self._writing)
        return sorted(ids)

    def _forget_tenant(self, tenant: str) -> list[int]:
        ids = self._queue.drop_tenant(tenant or None)
        for row_id in ids:
            self._rows.pop(row_id, None)
        return ids

    def submit(self, rows: Sequence[OutboxRow]) -> None:
        """Queue rows this replica has claimed."""
        now_wall = self._clock.now().timestamp()
        now = self._clock.monotonic()
        for row in rows:
            if row.status != "pending" or row.id in self._rows or row.broadcast_id in self._stopped:
                continue
            self._rows[row.id] = row
            self._queue.push(Ticket(
                row_id=row.id, conversation=conversation_key(row), tenant=row.tenant_id, priority=row.priority,
                ready_at=now + max(0.0, row.not_before - now_wall),
            ))
            self.metrics.message(row.category, "queued")
        self._wake.set()

    def cancel(self, row_ids: Sequence[int]) -> None:
        """Forget rows cancelled in the database (not yet sent)."""
        for row_id in row_ids:
            self._rows.pop(row_id, None)

    def stop_broadcast(self, broadcast_id: int) -> None:
        """A cancelled broadcast: none of its rows starts a send here from now on (one already started ends)."""
        self._stopped[broadcast_id] = None
        while len(self._stopped) > 10_000:
            self._stopped.popitem(last=False)
        self.cancel([row_id for row_id, row in self._rows.items() if row.broadcast_id == broadcast_id])

    async def broadcast_settled(self, broadcast_id: int) -> None:
        """Wait until no send of the broadcast's rows is in flight here."""
        while tasks := {task for task, of in self._broadcast_sends.items() if of == broadcast_id}:
            await asyncio.wait(tasks)

    # -- a turn's replies ------------------------------------------------------------------------

    async def acquire_reply_slot(self, conversation_id: str, tenant_id: str | None, wait_s: float) -> bool:
        """Take a send slot for a turn's reply, waiting at most `wait_s`; False: none in time (queue the reply).

        At once if nothing waits or is in flight in the conversation and the limits allow it; otherwise the
        reply waits as an express ticket behind what is already queued there (so it never overtakes an
        earlier reply waiting in the outbox), ahead of other conversations' notifications. A True answer
        must be followed by `release_reply_slot` when Teams has answered."""
        tenant = tenant_key(tenant_id)
        if not self._sends_for(tenant):
            gained = await self.ownership.acquire([tenant]) if tenant not in self._leaving else set()
            if not gained:  # another replica sends for this tenant: the outbox hands the reply to it
                return False
            await self._took_over(tenant)
        conversation_id = channel_of(conversation_id)  # a channel's threads share the channel's windows
        if self._queue.try_begin(conversation_id, tenant_id):
            return True
        if wait_s <= 0 or self._loop_task is None or self._stopping:
            return False
        ticket = Ticket(row_id=next(self._reply_ids), conversation=conversation_id, tenant=tenant_id,
                        priority=REPLY_PRIORITY)
        grant = asyncio.get_running_loop().create_future()
        self._reply_grants[ticket.row_id] = grant
        self._queue.push(ticket)
        self._wake.set()
        try:
            await asyncio.wait_for(grant, wait_s)
            return True
        except TimeoutError:
            self._queue.withdraw(ticket)  # not popped (or dropped with its conversation): nothing to give back
            return False
        finally:
            self._reply_grants.pop(ticket.row_id, None)

    def release_reply_slot(self, conversation_id: str, tenant_id: str | None, *,
                           throttled_for: float | None = None) -> None:
        """The reply sent with a slot from `acquire_reply_slot` has been answered; `throttled_for`: Teams
        answered 429 with this Retry-After, so the conversation waits that long."""
        conversation_id = channel_of(conversation_id)
        if throttled_for is not None:
            self.metrics.message("reply", "throttled")
            self.metrics.throttled(throttled_for)
            if self._limiter is not None:
                self._limiter.penalize(conversation_id, tenant_id, throttled_for)
        self._queue.done(conversation_id, tenant_id)
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        """The loop. It only ends with `stop()`: an error in a pass is logged and the pass is tried again."""
        while not self._stopping:
            try:
                await self._pass()
            except Exception as exc:  # never let delivery die; the error is logged and the loop goes on
                self._last_error = reason(exc)
                if is_unavailable(exc):  # the outage is logged once (state.availability); the details at DEBUG
                    log.debug("delivery loop: the database is unavailable; going on", exc_info=True)
                else:
                    log.exception("delivery loop error; going on")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _pass(self) -> None:
        self._wake.clear()  # first: a wake-up that arrives during this pass is kept for the wait below
        if self._maintenance_due:
            self._maintenance_due = False
            try:
                await self.maintain()
            except Exception:
                self._maintenance_due = True  # heartbeat, leases and claims are retried on the next pass
                raise
        elif self._claim_wanted and len(self._queue) < self._claim_batch // 2:
            await self.claim_more()
        self.pump()
        now = self._clock.monotonic()
        flush_due: float | None = None
        if self._outcomes:
            if self._unflushed_since is None:
                self._unflushed_since = now
            flush_due = max(self._flush_retry_at, self._unflushed_since + self._flush_interval)
            if now >= flush_due or (len(self._outcomes) >= self._flush_every and now >= self._flush_retry_at):
                await self.flush()
                return  # outcomes may have arrived during the flush
        wake = self._queue.next_wake() if len(self._in_flight) < self.pacing.limit else None
        if flush_due is not None:
            wake = flush_due if wake is None else min(wake, flush_due)
        timeout = None if wake is None else max(0.0, wake - self._clock.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def pump(self) -> int:
        """Start every send that may go now; returns how many started."""
        room = self.pacing.limit - len(self._in_flight)
        if room <= 0 or self._stopping:
            return 0
        tickets = self._queue.pop_ready(room)
        sends = []
        for ticket in tickets:
            if ticket.row_id >= _REPLY_TICKETS:
                self._grant_reply(ticket)
            else:
                sends.append(ticket)
        if sends:  # where the rows go: one lookup for the batch (after a restart nothing is cached yet)
            targets = {channel_of(row.conversation_id) for t in sends
                       if (row := self._rows.get(t.row_id)) and row.conversation_id}
            lookup = asyncio.ensure_future(self._references.get_many(targets)) if targets else None
            for ticket in sends:
                task = asyncio.create_task(self._deliver(ticket, lookup))
                self._in_flight.add(task)
                if (row := self._rows.get(ticket.row_id)) is not None and row.broadcast_id is not None:
                    self._broadcast_sends[task] = row.broadcast_id
                task.add_done_callback(self._finished)
        return len(tickets)

    def _grant_reply(self, ticket: Ticket) -> None:
        grant = self._reply_grants.get(ticket.row_id)
        if grant is None or grant.done():  # the turn stopped waiting: give the slot back
            self._queue.done(ticket.conversation, ticket.tenant)
            self._wake.set()
        else:
            grant.set_result(None)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._broadcast_sends.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed unexpectedly", exc_info=task.exception())
        self._wake.set()

    async def idle(self) -> None:
        """Wait until no send is in flight (tests and shutdown)."""
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))

    async def flush(self) -> bool:
        """Write the buffered outcomes now; False (outcomes kept, retried with backoff) if the database failed."""
        async with self._flush_lock:
            outcomes, self._outcomes = self._outcomes, []
            if not outcomes:
                return True
            self._writing = outcomes
            try:
                await self._store.apply(outcomes)
            except Exception as exc:  # database locked, disk full, connection lost: keep them, in order
                self._writing = []
                self.metrics.database_error("worker")
                self._outcomes[:0] = outcomes
                self._flush_failures += 1
                delay = backoff_s(self._flush_failures, 0.5, _FLUSH_RETRY_MAX_S)
                self._flush_retry_at = self._clock.monotonic() + delay
                self._last_error = f"writing {len(outcomes)} outcome(s): {reason(exc)}"
                if is_unavailable(exc):  # the outage is logged once (state.availability); the details at DEBUG
                    log.debug("could not write %d delivery outcome(s), retrying in %.1f s", len(outcomes), delay,
                              exc_info=True)
                else:
                    log.warning("could not write %d delivery outcome(s), retrying in %.1f s: %s", len(outcomes),
                                delay, exc, exc_info=self._flush_failures == 1)
                return False
            self._writing = []
            if self._flush_failures:
                log.info("delivery outcomes written again after %d failed attempt(s)", self._flush_failures)
            self._flush_failures, self._flush_retry_at = 0, 0.0
            self._unflushed_since = self._clock.monotonic() if self._outcomes else None
            return True

    def health(self) -> dict[str, Any]:
        """`ok` False with a reason while delivery is stuck: outcomes unwritten for over `stuck_after_s`, or
        the loop gone."""
        waiting = 0.0 if self._unflushed_since is None else self._clock.monotonic() - self._unflushed_since
        report: dict[str, Any] = {"ok": True, "queued": len(self._queue), "in_flight": len(self._in_flight),
                                  "unwritten_outcomes": len(self._outcomes)}
        if self._loop_task is not None and self._loop_task.done():
            report.update(ok=False, reason="the delivery loop has stopped")
        elif waiting > self._stuck_after:
            report.update(ok=False, reason=f"{len(self._outcomes)} delivery outcome(s) unwritten for "
                                           f"{waiting:.0f} s: {self._last_error or 'the database is not answering'}")
        return report

    def _queue_rows(self) -> list[OutboxRow]:
        """Rows held here that are not in flight (tests and /healthz)."""
        return list(self._rows.values())

    def replica_status(self) -> dict[str, Any]:
        """For /healthz: which replica this is, the tenants it sends for and the rows it holds."""
        return {"id": self.ownership.replica_id, "tenants": sorted(self.ownership.owned),
                "handing_over": sorted(self._leaving), "rows": len(self._rows),
                "live": [] if self.ownership.standalone else self.ownership.live}

    def _outcome(self, outcome: Outcome) -> None:
        if not self._outcomes and self._unflushed_since is None:
            self._unflushed_since = self._clock.monotonic()
        self._outcomes.append(outcome)

    # -- one send --------------------------------------------------------------------------------

    async def _deliver(self, ticket: Ticket,
                       lookup: asyncio.Future[dict[str, ConversationRecord]] | None = None) -> None:
        row = self._rows.get(ticket.row_id)
        if row is None or row.broadcast_id in self._stopped:  # cancelled meanwhile
            self._rows.pop(ticket.row_id, None)
            self._queue.done(ticket.conversation, ticket.tenant)
            return
        tenant = tenant_key(row.tenant_id)
        self._in_flight_tenants[tenant] = self._in_flight_tenants.get(tenant, 0) + 1
        try:
            with log_context(conversation_id=row.conversation_id, tenant_id=row.tenant_id, outbox_id=row.id):
                await self._deliver_row(row, ticket, lookup)
        finally:
            self._in_flight_tenants[tenant] -= 1
            if not self._in_flight_tenants[tenant]:
                del self._in_flight_tenants[tenant]

    async def _deliver_row(self, row: OutboxRow, ticket: Ticket,
                           lookup: asyncio.Future[dict[str, ConversationRecord]] | None) -> None:
        retry: Ticket | None = None
        try:
            if row.expires_at is not None and row.expires_at <= self._clock.now().timestamp():
                self._finish(row, Outcome(row.id, "expired", last_error="expired before it could be sent"))
                return
            started = time.perf_counter()
            try:
                activity_id = await self._send(row, lookup)
            finally:
                self.metrics.send_latency(time.perf_counter() - started)
            self._finish(row, Outcome(row.id, "sent", attempts=row.attempts + 1, activity_id=activity_id,
                                      conversation_id=row.conversation_id if row.target_user_id else None,
                                      sent_at=self._clock.now().timestamp()))  # (only a user's row finds its chat)
        except SendFailure as failure:
            retry = await self._failed(row, ticket, failure)
        except Exception as exc:  # a bug or a surprise from a library: the send may have gone, so it counts
            self._unexpected(row, exc)
            retry = await self._failed(row, ticket, SendFailure("retry", None, type(exc).__name__, str(exc)))
        finally:
            if retry is not None and not self._keeps(row):  # handed over meanwhile: its new owner retries it
                self._rows.pop(row.id, None)
                retry = None
            self._queue.done(ticket.conversation, ticket.tenant, retry)

    def _unexpected(self, row: OutboxRow, exc: Exception) -> None:
        """Log an unexpected send error: its traceback the first time, one line when the same error comes again."""
        signature = f"{type(exc).__name__}: {exc}"[:300]
        if signature in self._bugs_logged:
            log.warning("message %d: unexpected error while sending (traceback logged before): %s", row.id, signature)
            return
        if len(self._bugs_logged) >= 1000:
            self._bugs_logged.clear()
        self._bugs_logged.add(signature)
        log.error("message %d: unexpected error while sending", row.id, exc_info=exc)

    def _keeps(self, row: OutboxRow) -> bool:
        return self._sends_for(tenant_key(row.tenant_id))

    def _sends_for(self, tenant: str) -> bool:
        return self.ownership.owns(tenant) and tenant not in self._leaving

    async def _send(self, row: OutboxRow, lookup: asyncio.Future[dict[str, ConversationRecord]] | None) -> str:
        try:
            record = await self._target(row, lookup)
            activity_id = await self._activity_to_update(row) if row.kind == "update" else ""
        except SendFailure:
            raise
        except Exception as exc:
            if not is_unavailable(exc):  # a bug (or a surprise from Teams while opening a chat): uses an attempt
                raise
            self.metrics.database_error("worker")  # the database is away: nothing was sent, try again later
            raise SendFailure("retry", None, "DatabaseUnavailable", reason(exc), attempted=False) from exc
        if row.kind == "update":
            return await self._sender.update(record.service_url, record.conversation_id, activity_id, row.payload)
        return await self._sender.send(record.service_url, record.conversation_id, row.payload)

    async def _target(self, row: OutboxRow,
                      lookup: asyncio.Future[dict[str, ConversationRecord]] | None) -> ConversationRecord:
        if row.conversation_id:
            channel = channel_of(row.conversation_id)
            # (shielded: a cancelled send must not cancel the batch's lookup that the others share)
            found = {} if lookup is None else lookup.result() if lookup.done() else await asyncio.shield(lookup)
            record = found.get(channel) or await self._references.get(channel)
            if record is None or not record.active:  # before giving up on it, make sure the cache is not stale
                record = await self._references.get(channel, fresh=True)
            if record is None:
                raise SendFailure("gone", None, "UnknownConversation", "the bot has never seen this conversation")
            if not record.active:
                raise SendFailure("gone", None, "ConversationInactive", record.inactive_reason or "inactive")
            if record.conversation_id != row.conversation_id:  # one thread of the channel: post there
                return replace(record, conversation_id=row.conversation_id)
            return record
        return await self._personal_chat(row)

    async def _personal_chat(self, row: OutboxRow) -> ConversationRecord:
        """Reuse the user's 1:1 chat, or create it once and remember it."""
        user_id = row.target_user_id or ""
        known = await self._references.for_user(user_id, active_only=False)
        personal = [r for r in known if r.conversation_type == "personal"]
        if personal:
            row.conversation_id = personal[0].conversation_id
            if not personal[0].active:
                raise SendFailure("drop", None, "ConversationInactive", personal[0].inactive_reason or "inactive")
            return personal[0]
        if (not known or not known[0].bot_id) and self._new_people is not None and self._new_people.reachable(row):
            record = await self._new_people.open_chat(row)
            self._chat_opened(row, record.conversation_id)
        if not known or not known[0].bot_id:
            raise SendFailure("drop", None, "UnknownUser", f"no conversation with {user_id} to reach them from")
        base = known[0]
        member_id = await self._references.teams_user_id(user_id) or user_id
        conversation_id = await self._sender.open_personal_chat(
            base.service_url, row.tenant_id or base.tenant_id, base.bot_id or "", member_id
        )
        record = ConversationRecord(
            conversation_id=conversation_id, channel_id=base.channel_id, service_url=base.service_url,
            reference={
                "bot": {"id": base.bot_id, "name": base.bot_name},
                "user": {"id": member_id},
                "conversation": {"id": conversation_id, "conversationType": "personal",
                                 "tenantId": row.tenant_id or base.tenant_id},
                "channelId": base.channel_id,
                "serviceUrl": base.service_url,
            },
            tenant_id=row.tenant_id or base.tenant_id, conversation_type="personal", user_id=member_id,
            bot_id=base.bot_id, bot_name=base.bot_name,
        )
        await self._references.upsert(record, reactivate=True)
        log.info("opened a 1:1 chat %s with user %s", conversation_id, user_id)
        self._chat_opened(row, conversation_id)

    @staticmethod
    def _chat_opened(row: OutboxRow, conversation_id: str) -> NoReturn:
        """Creating the chat was this ticket's request to Teams: the message itself goes with the next ticket of
        the conversation, so each request counts against Teams' limits (the chat is known from now on)."""
        row.conversation_id = conversation_id
        raise SendFailure("retry", None, "ChatOpened", f"opened the 1:1 chat {conversation_id}; the message is next",
                          retry_after=0.0, attempted=False)

    async def _activity_to_update(self, row: OutboxRow) -> str:
        if row.update_of is None:
            raise SendFailure("drop", None, "BadUpdate", "an update row names no message to update")
        known = self._sent_ids.get(row.update_of)
        if known:
            return known
        original = await self._store.get(row.update_of)
        if original is None or original.status in ("failed", "dropped", "expired", "cancelled"):
            raise SendFailure("drop", None, "BadUpdate", f"message {row.update_of} was never sent")
        if not original.activity_id:
            raise SendFailure("retry", None, "NotSentYet", f"message {row.update_of} is not sent yet", 1.0)
        return original.activity_id

    def _finish(self, row: OutboxRow, outcome: Outcome) -> None:
        self._rows.pop(row.id, None)
        if outcome.activity_id:
            self._sent_ids[row.id] = outcome.activity_id
            if len(self._sent_ids) > 10_000:
                self._sent_ids.popitem(last=False)
        row.status = outcome.status
        self._outcome(outcome)
        self.metrics.message(row.category, outcome.status)
        if len(self._outcomes) >= self._flush_every:
            self._wake.set()

    async def _failed(self, row: OutboxRow, ticket: Ticket, failure: SendFailure) -> Ticket | None:
        attempts = row.attempts + 1 if failure.attempted else row.attempts
        if failure.status == 429:
            self.metrics.message(row.category, "throttled")
            self.metrics.throttled(failure.retry_after)
            if self._limiter is not None:
                self._limiter.penalize(ticket.conversation, ticket.tenant, failure.retry_after or self._retry.base_s)
        if failure.action == "park" and self._new_people is not None:
            return await self._park(row, ticket, failure, attempts)
        if failure.code == "ChatOpened":  # not a failure: the message goes with its next ticket, to that chat
            self._outcome(Outcome(row.id, "pending", conversation_id=row.conversation_id))
            ticket.ready_at = self._clock.monotonic()
            return ticket
        if failure.action == "retry" and (attempts < self._retry.max_attempts or not failure.attempted):
            delay = self._retry.delay(max(1, attempts), failure.retry_after, self._rng)
            row.attempts = attempts
            self.metrics.message(row.category, "retried")
            self._outcome(Outcome(row.id, "pending", attempts=attempts, last_error=str(failure),
                                  not_before=self._clock.now().timestamp() + delay))
            ticket.ready_at = self._clock.monotonic() + delay
            return ticket
        thread_gone = failure.status == 404 and row.conversation_id != channel_of(row.conversation_id or "")
        if failure.action == "gone" and row.conversation_id and not thread_gone:  # (a lost thread: not its channel)
            self._finish(row, Outcome(row.id, "cancelled", attempts=attempts, last_error=str(failure)))
            try:
                await self._conversation_gone(channel_of(row.conversation_id), failure)
            except Exception as exc:  # the database did not answer: the conversation's next send finds out again
                self.metrics.database_error("worker")
                log.warning("could not record that %s is unreachable (%s)", row.conversation_id, exc)
            return None
        if failure.status == 401:
            log.error("Teams refused the bot's credentials (%s): check MicrosoftAppId/MicrosoftAppPassword", failure)
        else:
            log.warning("message %d not delivered: %s", row.id, failure)
        self._finish(row, Outcome(row.id, "failed", attempts=attempts, last_error=str(failure)))
        return None

    async def _park(self, row: OutboxRow, ticket: Ticket, failure: SendFailure, attempts: int) -> Ticket | None:
        """Hold the row (written now, not buffered) until what it waits for is done, then say it is parked; if
        the database does not answer, it stays pending here and is tried again."""
        self._rows.pop(row.id, None)  # first: a release racing with this cannot find it still queued here
        try:
            await self._store.apply([Outcome(row.id, "held", attempts=attempts, last_error=failure.message)])
        except Exception as exc:
            self.metrics.database_error("worker")
            self._rows[row.id] = row
            ticket.ready_at = self._clock.monotonic() + self._retry.base_s
            log.warning("message %d: could not park it (%s); trying again", row.id, exc)
            return ticket
        row.status = "held"
        self.metrics.message(row.category, "held")
        if self._new_people is not None:
            await self._new_people.parked(row)
        return None

    async def _conversation_gone(self, conversation_id: str, failure: SendFailure) -> None:
        """Blocked, removed or not found: stop sending there until the conversation speaks to us again."""
        await self.flush()  # so rows already sent there are recorded before the cancel
        await self._references.mark_inactive(conversation_id, failure.code)
        cancelled = await self._store.cancel_conversation(conversation_id, str(failure))
        dropped = self._queue.drop_conversation(conversation_id)
        self.cancel(dropped)
        for category in cancelled.values():
            self.metrics.message(category, "cancelled")
        log.warning("conversation %s is unreachable (%s); marked inactive, %d pending message(s) cancelled",
                    conversation_id, failure, len(cancelled))
