"""Which outbox message may go next: fair across tenants and conversations, within Teams' limits.

Pure and clock-driven (no sleeping): the delivery worker asks `pop_ready()` for what may be sent now,
reports `done()` when a send finishes, and waits until `next_wake()` when nothing may go. A
conversation has at most one message in flight, keeps its own order (priority, then age), and one
busy conversation never holds up the others; a tenant whose budget is spent costs one heap entry,
not one per conversation.

A turn's replies take their slots here too (see docs/architecture.md, "Replies inside Teams' limits"):
`try_begin` for a reply that may go at once without overtaking anything, else a ticket of
`EXPRESS_PRIORITY` that the turn `withdraw`s if it is not popped within about a second. Conversations
whose next ticket is a reply wait in their tenant's express lane, served before every other conversation.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from state.clock import Clock

EXPRESS_PRIORITY = 2
"""Tickets of at least this priority (turn replies) go before every other conversation of their tenant."""


class Limiter(Protocol):
    """The rate limits, as the queue needs them (see scheduler/ratelimit.py)."""

    def tenant_wait(self, tenant_id: str | None) -> float: ...

    def conversation_wait(self, conversation_id: str) -> float: ...

    def begin(self, conversation_id: str, tenant_id: str | None) -> None: ...

    def complete(self, conversation_id: str, tenant_id: str | None) -> None: ...


@dataclass(order=True)
class Ticket:
    """One message waiting to be sent. Ordered within its conversation: urgent first, then oldest."""

    sort_key: tuple[int, int] = field(init=False, repr=False)
    row_id: int = field(compare=False)
    conversation: str = field(compare=False)
    tenant: str | None = field(compare=False)
    priority: int = field(default=0, compare=False)
    ready_at: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        self.sort_key = (-self.priority, self.row_id)


@dataclass
class _Conversation:
    tickets: list[Ticket] = field(default_factory=list)  # heap
    in_flight: bool = False
    queued: bool = False  # in one of its tenant's lanes or its delayed heap
    slot: int = 0  # the seq of its live entry there; entries with another seq are stale (skipped)
    lane: str = ""  # where that entry is: "express", "ready" or "delayed"


@dataclass
class _Tenant:
    express: deque[tuple[int, str]] = field(default_factory=deque)  # (slot, conversation): a reply is next
    ready: deque[tuple[int, str]] = field(default_factory=deque)  # (slot, conversation)
    delayed: list[tuple[float, int, str]] = field(default_factory=list)  # heap of (ready_at, slot, conversation)
    wake_at: float | None = None  # time of its live entry in the tenant heap, None if not scheduled

    def waiting(self) -> bool:
        return bool(self.express or self.ready or self.delayed)


class SendQueue:
    def __init__(self, clock: Clock, limiter: Limiter) -> None:
        self._clock = clock
        self._limiter = limiter
        self._conversations: dict[str, _Conversation] = {}
        self._tenants: dict[str | None, _Tenant] = {}
        self._heap: list[tuple[float, int, str | None]] = []  # (wake_at, seq, tenant); stale entries skipped
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        """Tickets waiting (not counting those in flight)."""
        return self._size

    def push(self, ticket: Ticket) -> None:
        state = self._conversations.setdefault(ticket.conversation, _Conversation())
        heapq.heappush(state.tickets, ticket)
        self._size += 1
        if state.in_flight:
            return
        if (state.queued and state.lane == "ready" and ticket.priority >= EXPRESS_PRIORITY
                and state.tickets[0] is ticket):
            state.queued = False  # a reply is next now: move the conversation to the express lane
        self._place(ticket.conversation, ticket.tenant, state)

    def try_begin(self, conversation: str, tenant: str | None) -> bool:
        """Take a slot for a send made outside the queue (a turn's reply) if it may go now without overtaking
        anything: nothing waits or is in flight in its conversation, no other reply of its tenant waits, and
        the limits allow it. Then it is in flight until `done` like a popped ticket."""
        if conversation in self._conversations:
            return False
        parked = self._tenants.get(tenant)
        if parked is not None and parked.express:
            return False
        if self._limiter.tenant_wait(tenant) > 0 or self._limiter.conversation_wait(conversation) > 0:
            return False
        self._limiter.begin(conversation, tenant)
        self._conversations[conversation] = _Conversation(in_flight=True)
        return True

    def withdraw(self, ticket: Ticket) -> bool:
        """Take back a waiting ticket (e.g. a reply that could not go in time); False if it is not waiting
        (popped meanwhile, or dropped with its conversation)."""
        state = self._conversations.get(ticket.conversation)
        if state is None:
            return False
        for index, waiting in enumerate(state.tickets):
            if waiting is ticket:
                state.tickets[index] = state.tickets[-1]
                state.tickets.pop()
                heapq.heapify(state.tickets)
                self._size -= 1
                if not state.tickets and not state.in_flight and not state.queued:
                    del self._conversations[ticket.conversation]
                return True
        return False

    def done(self, conversation: str, tenant: str | None, retry: Ticket | None = None) -> None:
        """The in-flight send of `conversation` finished; `retry` goes back at the head of its queue."""
        self._limiter.complete(conversation, tenant)
        parked = self._tenants.get(tenant)
        if parked is not None and parked.wake_at is None and parked.waiting():
            self._schedule(tenant, parked, self._clock.monotonic())  # a completion may free its budget
        state = self._conversations.get(conversation)
        if state is None:
            return
        state.in_flight = False
        if retry is not None:
            heapq.heappush(state.tickets, retry)
            self._size += 1
        if state.tickets:
            self._place(conversation, tenant, state)
        elif not state.queued:
            del self._conversations[conversation]

    def drop_conversation(self, conversation: str) -> list[int]:
        """Forget a conversation's waiting tickets (it was blocked or removed); returns their row ids."""
        state = self._conversations.get(conversation)
        if state is None:
            return []
        ids = [t.row_id for t in state.tickets]
        self._size -= len(ids)
        state.tickets.clear()
        return ids

    def drop_tenant(self, tenant: str | None) -> list[int]:
        """Forget every waiting ticket of a tenant (another replica sends for it now); returns their row ids.
        Tickets in flight are not affected: `done` still comes for them."""
        ids: list[int] = []
        for state in self._conversations.values():
            if state.tickets and state.tickets[0].tenant == tenant:
                ids += [t.row_id for t in state.tickets]
                self._size -= len(state.tickets)
                state.tickets.clear()
        return ids

    def next_wake(self) -> float | None:
        """Monotonic time at which `pop_ready` may return something, None when the queue is idle."""
        self._discard_stale()
        return self._heap[0][0] if self._heap else None

    def pop_ready(self, limit: int) -> list[Ticket]:
        """Up to `limit` tickets that may be sent now; their rate budget is taken."""
        now = self._clock.monotonic()
        out: list[Ticket] = []
        while len(out) < limit:
            self._discard_stale()
            if not self._heap or self._heap[0][0] > now:
                break
            _, _, tenant_id = heapq.heappop(self._heap)
            tenant = self._tenants[tenant_id]
            tenant.wake_at = None
            while tenant.delayed and tenant.delayed[0][0] <= now:
                _, slot, conversation = heapq.heappop(tenant.delayed)
                state = self._conversations.get(conversation)
                if state is not None and state.queued and state.slot == slot:
                    self._enqueue_ready(tenant, conversation, state)
            if not (tenant.express or tenant.ready):
                if tenant.delayed:
                    self._schedule(tenant_id, tenant, tenant.delayed[0][0])
                else:
                    del self._tenants[tenant_id]
                continue
            tenant_wait = self._limiter.tenant_wait(tenant_id)
            if tenant_wait == math.inf:
                continue  # parked: every slot is in flight; `done` reschedules it
            if tenant_wait > 0:
                self._schedule(tenant_id, tenant, now + tenant_wait)
                continue
            slot, conversation = (tenant.express or tenant.ready).popleft()
            state = self._conversations.get(conversation)
            if state is None or not state.queued or state.slot != slot:
                pass  # stale: the conversation moved to the express lane
            elif not state.tickets:  # dropped or withdrawn while queued
                state.queued = False
                if not state.in_flight:
                    del self._conversations[conversation]
            else:
                state.queued = False
                wait = max(self._limiter.conversation_wait(conversation), state.tickets[0].ready_at - now)
                if wait == math.inf:  # cannot happen with one send in flight per conversation; re-check soon
                    wait = 1.0
                if wait > 0:
                    self._delay(tenant, conversation, state, now + wait)
                else:
                    self._limiter.begin(conversation, tenant_id)
                    out.append(heapq.heappop(state.tickets))
                    self._size -= 1
                    state.in_flight = True
            self._schedule(tenant_id, tenant, now)
        return out

    # -- internals -------------------------------------------------------------------------------

    def _place(self, conversation: str, tenant_id: str | None, state: _Conversation) -> None:
        if state.queued:
            return
        tenant = self._tenants.setdefault(tenant_id, _Tenant())
        ready_at = state.tickets[0].ready_at
        now = self._clock.monotonic()
        if ready_at <= now:
            self._enqueue_ready(tenant, conversation, state)
            self._schedule(tenant_id, tenant, now)
        else:
            self._delay(tenant, conversation, state, ready_at)
            self._schedule(tenant_id, tenant, ready_at)

    def _enqueue_ready(self, tenant: _Tenant, conversation: str, state: _Conversation) -> None:
        state.queued = True
        state.slot = next(self._seq)
        state.lane = "express" if state.tickets[0].priority >= EXPRESS_PRIORITY else "ready"
        (tenant.express if state.lane == "express" else tenant.ready).append((state.slot, conversation))

    def _delay(self, tenant: _Tenant, conversation: str, state: _Conversation, at: float) -> None:
        state.queued = True
        state.slot = next(self._seq)
        state.lane = "delayed"
        heapq.heappush(tenant.delayed, (at, state.slot, conversation))

    def _schedule(self, tenant_id: str | None, tenant: _Tenant, at: float) -> None:
        if tenant.wake_at is not None and tenant.wake_at <= at:
            return
        tenant.wake_at = at
        heapq.heappush(self._heap, (at, next(self._seq), tenant_id))

    def _discard_stale(self) -> None:
        while self._heap:
            at, _, tenant_id = self._heap[0]
            tenant = self._tenants.get(tenant_id)
            if tenant is not None and tenant.wake_at == at:
                return
            heapq.heappop(self._heap)
