"""The delivery worker: sends outbox rows to Teams within its limits, retries right, loses nothing.

One loop task picks what may go now from the SendQueue, runs each send as a tracked task (at most
`max_in_flight` at once, one per conversation), and waits on a single timer for the next one. Outcomes
are buffered and written to the outbox in batches; `flush()` writes them now.

A turn's replies take their send slots from the same queue and limits (`acquire_reply_slot` /
`release_reply_slot`), so replies and proactive sends share one budget per conversation and tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler.clock import Clock
from scheduler.sendqueue import SendQueue, Ticket
from state.outbox import REPLY_PRIORITY, OutboxRow, OutboxStore, Outcome
from state.references import ConversationRecord, ConversationReferences

from .failures import SendFailure

log = logging.getLogger(__name__)

_REPLY_TICKETS = 1 << 62  # ids of a turn's reply tickets: after every outbox row of the same priority


class Limiter(Protocol):
    """What the worker tells the rate limiter beyond what the send queue asks (scheduler/ratelimit.py)."""

    def penalize(self, conversation_id: str, tenant_id: str | None, retry_after: float) -> None: ...


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
        return rng.uniform(self.base_s / 2, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))


def conversation_key(row: OutboxRow) -> str:
    return row.conversation_id or f"user:{row.target_user_id}"


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
        flush_every: int = 256,
        flush_interval_s: float = 0.05,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._references = references
        self._sender = sender
        self._queue = queue
        self._clock = clock
        self._limiter = limiter
        self._retry = retry or RetryPolicy()
        self._max_in_flight = max_in_flight
        self._flush_every = flush_every
        self._flush_interval = flush_interval_s
        self._rng = rng or random.Random()
        self._rows: dict[int, OutboxRow] = {}
        self._sent_ids: OrderedDict[int, str] = OrderedDict()  # recent row id → Teams activity id
        self._in_flight: set[asyncio.Task[None]] = set()
        self._outcomes: list[Outcome] = []
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._stopping = False
        self._reply_ids = itertools.count(_REPLY_TICKETS)
        self._reply_grants: dict[int, asyncio.Future[None]] = {}  # reply ticket id → the waiting turn
        self.counts: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------------------------------

    async def load(self) -> int:
        """Queue every pending row from the database (at start-up, after a crash)."""
        rows = await self._store.pending()
        self.submit(rows)
        return len(rows)

    async def start(self) -> None:
        await self.load()
        self._loop_task = asyncio.create_task(self._run(), name="delivery-worker")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking new sends, let in-flight ones finish (up to `timeout`), flush outcomes."""
        self._stopping = True
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
        await self.flush()

    # -- feeding ---------------------------------------------------------------------------------

    def submit(self, rows: Sequence[OutboxRow]) -> None:
        """Queue rows that are pending in the database (just enqueued, released or loaded)."""
        now_wall = self._clock.now().timestamp()
        now = self._clock.monotonic()
        for row in rows:
            if row.status != "pending" or row.id in self._rows:
                continue
            self._rows[row.id] = row
            self._queue.push(Ticket(
                row_id=row.id, conversation=conversation_key(row), tenant=row.tenant_id, priority=row.priority,
                ready_at=now + max(0.0, row.not_before - now_wall),
            ))
            self.counts["queued"] += 1
        self._wake.set()

    def cancel(self, row_ids: Sequence[int]) -> None:
        """Forget rows cancelled in the database (not yet sent)."""
        for row_id in row_ids:
            self._rows.pop(row_id, None)

    # -- a turn's replies ------------------------------------------------------------------------

    async def acquire_reply_slot(self, conversation_id: str, tenant_id: str | None, wait_s: float) -> bool:
        """Take a send slot for a turn's reply, waiting at most `wait_s`; False: none in time (queue the reply).

        At once if nothing waits or is in flight in the conversation and the limits allow it; otherwise the
        reply waits as an express ticket behind what is already queued there (so it never overtakes an
        earlier reply waiting in the outbox), ahead of other conversations' notifications. A True answer
        must be followed by `release_reply_slot` when Teams has answered."""
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
        if throttled_for is not None:
            self.counts["throttled"] += 1
            if self._limiter is not None:
                self._limiter.penalize(conversation_id, tenant_id, throttled_for)
        self._queue.done(conversation_id, tenant_id)
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        flush_due: float | None = None
        while not self._stopping:
            self._wake.clear()  # first: a wake-up that arrives during this pass is kept for the wait below
            self.pump()
            if self._outcomes and flush_due is None:
                flush_due = self._clock.monotonic() + self._flush_interval
            if flush_due is not None and (len(self._outcomes) >= self._flush_every
                                          or self._clock.monotonic() >= flush_due):
                await self.flush()
                flush_due = None
                continue  # outcomes may have arrived during the flush
            wake = self._queue.next_wake() if len(self._in_flight) < self._max_in_flight else None
            if flush_due is not None:
                wake = flush_due if wake is None else min(wake, flush_due)
            timeout = None if wake is None else max(0.0, wake - self._clock.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def pump(self) -> int:
        """Start every send that may go now; returns how many started."""
        room = self._max_in_flight - len(self._in_flight)
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
            targets = {row.conversation_id for t in sends if (row := self._rows.get(t.row_id)) and row.conversation_id}
            lookup = asyncio.ensure_future(self._references.get_many(targets)) if targets else None
            for ticket in sends:
                task = asyncio.create_task(self._deliver(ticket, lookup))
                self._in_flight.add(task)
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
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed unexpectedly", exc_info=task.exception())
        self._wake.set()

    async def idle(self) -> None:
        """Wait until no send is in flight (tests and shutdown)."""
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))

    async def flush(self) -> None:
        async with self._flush_lock:
            outcomes, self._outcomes = self._outcomes, []
            if outcomes:
                await self._store.apply(outcomes)

    # -- one send --------------------------------------------------------------------------------

    async def _deliver(self, ticket: Ticket,
                       lookup: asyncio.Future[dict[str, ConversationRecord]] | None = None) -> None:
        row = self._rows.get(ticket.row_id)
        if row is None:  # cancelled meanwhile
            self._queue.done(ticket.conversation, ticket.tenant)
            return
        retry: Ticket | None = None
        try:
            if row.expires_at is not None and row.expires_at <= self._clock.now().timestamp():
                self._finish(row, Outcome(row.id, "expired", last_error="expired before it could be sent"))
                return
            activity_id = await self._send(row, lookup)
            self._finish(row, Outcome(row.id, "sent", attempts=row.attempts + 1, activity_id=activity_id,
                                      conversation_id=row.conversation_id, sent_at=self._clock.now().timestamp()))
        except SendFailure as failure:
            retry = await self._failed(row, ticket, failure)
        finally:
            self._queue.done(ticket.conversation, ticket.tenant, retry)

    async def _send(self, row: OutboxRow, lookup: asyncio.Future[dict[str, ConversationRecord]] | None) -> str:
        record = await self._target(row, lookup)
        if row.kind == "update":
            activity_id = await self._activity_to_update(row)
            return await self._sender.update(record.service_url, record.conversation_id, activity_id, row.payload)
        return await self._sender.send(record.service_url, record.conversation_id, row.payload)

    async def _target(self, row: OutboxRow,
                      lookup: asyncio.Future[dict[str, ConversationRecord]] | None) -> ConversationRecord:
        if row.conversation_id:
            found = await asyncio.shield(lookup) if lookup is not None else {}
            record = found.get(row.conversation_id) or await self._references.get(row.conversation_id)
            if record is None:
                raise SendFailure("gone", None, "UnknownConversation", "the bot has never seen this conversation")
            if not record.active:
                raise SendFailure("gone", None, "ConversationInactive", record.inactive_reason or "inactive")
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
        row.conversation_id = conversation_id
        log.info("opened a 1:1 chat %s with user %s", conversation_id, user_id)
        return record

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
        self._outcomes.append(outcome)
        self.counts[outcome.status] += 1
        if len(self._outcomes) >= self._flush_every:
            self._wake.set()

    async def _failed(self, row: OutboxRow, ticket: Ticket, failure: SendFailure) -> Ticket | None:
        attempts = row.attempts + 1 if failure.attempted else row.attempts
        if failure.status == 429:
            self.counts["throttled"] += 1
            if self._limiter is not None:
                self._limiter.penalize(ticket.conversation, ticket.tenant, failure.retry_after or self._retry.base_s)
        if failure.action == "retry" and (attempts < self._retry.max_attempts or not failure.attempted):
            delay = self._retry.delay(max(1, attempts), failure.retry_after, self._rng)
            row.attempts = attempts
            self.counts["retried"] += 1
            self._outcomes.append(Outcome(row.id, "pending", attempts=attempts, last_error=str(failure),
                                          not_before=self._clock.now().timestamp() + delay))
            ticket.ready_at = self._clock.monotonic() + delay
            return ticket
        if failure.action == "gone" and row.conversation_id:
            await self._conversation_gone(row.conversation_id, failure)
            self._finish(row, Outcome(row.id, "cancelled", attempts=attempts, last_error=str(failure)))
            return None
        if failure.status == 401:
            log.error("Teams refused the bot's credentials (%s): check MicrosoftAppId/MicrosoftAppPassword", failure)
        else:
            log.warning("message %d not delivered: %s", row.id, failure)
        self._finish(row, Outcome(row.id, "failed", attempts=attempts, last_error=str(failure)))
        return None

    async def _conversation_gone(self, conversation_id: str, failure: SendFailure) -> None:
        """Blocked, removed or not found: stop sending there until the conversation speaks to us again."""
        await self.flush()  # so rows already sent there are recorded before the cancel
        await self._references.mark_inactive(conversation_id, failure.code)
        cancelled = await self._store.cancel_conversation(conversation_id, str(failure))
        dropped = self._queue.drop_conversation(conversation_id)
        self.cancel(dropped)
        self.counts["cancelled"] += len(cancelled)
        log.warning("conversation %s is unreachable (%s); marked inactive, %d pending message(s) cancelled",
                    conversation_id, failure, len(cancelled))
