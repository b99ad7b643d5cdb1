"""SendQueue: fairness across conversations and tenants, per-conversation order, waits from the limiter."""

from __future__ import annotations

from collections import defaultdict

from scheduler.sendqueue import EXPRESS_PRIORITY, SendQueue, Ticket
from state.clock import FakeClock
from state.outbox import REPLY_PRIORITY


class CountingLimiter:
    """At most `per_tenant` sends per tenant and `per_conversation` per conversation per 1 s bucket."""

    def __init__(self, clock: FakeClock, per_tenant: int = 1000, per_conversation: int = 1000) -> None:
        self.clock = clock
        self.per_tenant = per_tenant
        self.per_conversation = per_conversation
        self.tenant_sends: dict[tuple[str | None, int], int] = defaultdict(int)
        self.conversation_sends: dict[tuple[str, int], int] = defaultdict(int)
        self.completed = 0

    def _bucket(self) -> int:
        return int(self.clock.monotonic())

    def _until_next(self) -> float:
        return self._bucket() + 1 - self.clock.monotonic()

    def tenant_wait(self, tenant_id: str | None) -> float:
        full = self.tenant_sends[(tenant_id, self._bucket())] >= self.per_tenant
        return self._until_next() if full else 0.0

    def conversation_wait(self, conversation_id: str) -> float:
        full = self.conversation_sends[(conversation_id, self._bucket())] >= self.per_conversation
        return self._until_next() if full else 0.0

    def begin(self, conversation_id: str, tenant_id: str | None) -> None:
        self.tenant_sends[(tenant_id, self._bucket())] += 1
        self.conversation_sends[(conversation_id, self._bucket())] += 1

    def complete(self, conversation_id: str, tenant_id: str | None) -> None:
        self.completed += 1


def ticket(row_id: int, conversation: str, tenant: str | None = "t", priority: int = 0, ready_at: float = 0.0
           ) -> Ticket:
    return Ticket(row_id=row_id, conversation=conversation, tenant=tenant, priority=priority, ready_at=ready_at)


def drain(queue: SendQueue, clock: FakeClock, limit: int = 1000) -> list[tuple[float, int]]:
    """Send everything, finishing each send at once; returns (time, row id) in send order."""
    sent: list[tuple[float, int]] = []
    while len(queue):
        batch = queue.pop_ready(limit)
        for t in batch:
            sent.append((clock.monotonic(), t.row_id))
            queue.done(t.conversation, t.tenant)
        if not batch:
            wake = queue.next_wake()
            assert wake is not None and wake > clock.monotonic(), "a non-empty queue must say when to wake"
            clock.advance(wake - clock.monotonic())
    return sent


def test_one_in_flight_per_conversation_and_order_kept() -> None:
    clock = FakeClock()
    queue = SendQueue(clock, CountingLimiter(clock))
    for i in range(1, 4):
        queue.push(ticket(i, "a"))
    queue.push(ticket(10, "b"))
    first = queue.pop_ready(10)
    assert sorted(t.row_id for t in first) == [1, 10], "one per conversation at a time"
    assert queue.pop_ready(10) == []
    queue.done("a", "t")
    assert [t.row_id for t in queue.pop_ready(10)] == [2]


def test_urgent_goes_first_within_a_conversation() -> None:
    clock = FakeClock()
    queue = SendQueue(clock, CountingLimiter(clock))
    queue.push(ticket(1, "a"))
    queue.push(ticket(2, "a"))
    queue.push(ticket(3, "a", priority=1))
    assert [r for _, r in drain(queue, clock)] == [3, 1, 2]


def test_busy_conversation_does_not_hold_up_others() -> None:
    clock = FakeClock()
    queue = SendQueue(clock, CountingLimiter(clock, per_conversation=2))
    for i in range(20):
        queue.push(ticket(i, "busy"))
    queue.push(ticket(100, "quiet"))
    sent = drain(queue, clock)
    start = sent[0][0]
    assert (start, 100) in sent, "the quiet conversation goes in the first second"
    assert sent[-1][0] - start >= 9, "the busy one is spread over its rate"


def test_tenant_budget_is_shared_and_other_tenants_are_not_blocked() -> None:
    clock = FakeClock()
    limiter = CountingLimiter(clock, per_tenant=10)
    queue = SendQueue(clock, limiter)
    for i in range(50):
        queue.push(ticket(i, f"c{i}", tenant="big"))
    queue.push(ticket(999, "small-1", tenant="small"))
    sent = drain(queue, clock)
    start = sent[0][0]
    assert (start, 999) in sent
    per_second: dict[int, int] = defaultdict(int)
    for at, row in sent:
        if row != 999:
            per_second[int(at)] += 1
    assert max(per_second.values()) <= 10 and len(per_second) == 5


def test_retry_waits_for_its_ready_time_and_keeps_its_place() -> None:
    clock = FakeClock()
    queue = SendQueue(clock, CountingLimiter(clock))
    queue.push(ticket(1, "a"))
    queue.push(ticket(2, "a"))
    [first] = queue.pop_ready(10)
    first.ready_at = clock.monotonic() + 30
    queue.done("a", "t", retry=first)
    assert queue.pop_ready(10) == [], "message 2 must not overtake the retry of message 1"
    assert queue.next_wake() == clock.monotonic() + 30
    clock.advance(30)
    assert [t.row_id for t in queue.pop_ready(10)] == [1]


def test_dropping_a_conversation_returns_its_rows() -> None:
    clock = FakeClock()
    queue = SendQueue(clock, CountingLimiter(clock))
    for i in range(3):
        queue.push(ticket(i, "gone"))
    queue.push(ticket(7, "stay"))
    [a, b] = queue.pop_ready(10)
    assert sorted(queue.drop_conversation("gone")) == [1, 2]
    queue.done("gone", "t")
    queue.done("stay", "t")
    assert len(queue) == 0 and queue.pop_ready(10) == [] and queue.next_wake() is None
    assert {a.row_id, b.row_id} == {0, 7}


def test_future_tickets_wake_the_queue_at_their_time() -> None:
    clock = FakeClock()
    queue = SendQueue(clock, CountingLimiter(clock))
    queue.push(ticket(1, "a", ready_at=clock.monotonic() + 5))
    assert queue.pop_ready(10) == []
    assert queue.next_wake() == clock.monotonic() + 5
    clock.advance(5)
    assert [t.row_id for t in queue.pop_ready(10)] == [1]


# ---- a turn's replies ------------------------------------------------------------------------------------


def test_reply_rows_use_the_express_lane() -> None:
    assert REPLY_PRIORITY >= EXPRESS_PRIORITY


def test_a_reply_goes_before_the_notifications_of_other_conversations_of_its_tenant() -> None:
    clock = FakeClock()
    queue = SendQueue(clock, CountingLimiter(clock, per_tenant=2))
    for i in range(10):
        queue.push(ticket(i, f"n{i}"))
    queue.push(ticket(50, "busy"))  # a notification, queued before the reply that joins it below
    start = clock.monotonic()
    queue.push(ticket(100, "r", priority=EXPRESS_PRIORITY))
    queue.push(ticket(101, "busy", priority=EXPRESS_PRIORITY))
    sent = drain(queue, clock)
    assert [row for _, row in sent] == [100, 101, *range(10), 50]
    assert [at for at, _ in sent[:2]] == [start, start], "the replies take the first second's budget"


def test_try_begin_takes_a_slot_only_without_overtaking() -> None:
    clock = FakeClock()
    limiter = CountingLimiter(clock, per_tenant=3)
    queue = SendQueue(clock, limiter)
    assert queue.try_begin("idle", "t"), "nothing waits: the reply goes at once"
    assert not queue.try_begin("idle", "t"), "one send in flight per conversation"
    queue.push(ticket(1, "queued"))
    assert not queue.try_begin("queued", "t"), "a reply never overtakes what waits in its conversation"
    waiting = ticket(2, "other-reply", priority=EXPRESS_PRIORITY)
    queue.push(waiting)
    assert not queue.try_begin("third", "t"), "nor another reply of its tenant that waits for a slot"
    assert queue.try_begin("elsewhere", "t2"), "other tenants are not affected"
    assert [t.row_id for t in queue.pop_ready(10)] == [2, 1]
    assert not queue.try_begin("third", "t"), "the tenant's budget (3 per second) is spent"
    queue.done("idle", "t")
    assert limiter.completed == 1
    clock.advance(1)
    assert queue.try_begin("idle", "t")


def test_a_withdrawn_ticket_is_never_popped() -> None:
    clock = FakeClock()
    queue = SendQueue(clock, CountingLimiter(clock, per_conversation=1))
    queue.push(ticket(1, "a"))
    reply = ticket(2, "a", priority=EXPRESS_PRIORITY)
    queue.push(reply)
    [first] = queue.pop_ready(10)
    assert first.row_id == 2, "replies first within a conversation"
    assert not queue.withdraw(reply), "already popped"
    queue.done("a", "t")
    late = ticket(3, "a", priority=EXPRESS_PRIORITY)
    queue.push(late)
    assert queue.withdraw(late) and len(queue) == 1
    assert [r for _, r in drain(queue, clock)] == [1]
    assert queue.next_wake() is None
