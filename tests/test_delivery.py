"""The delivery worker against the connector double: sends, retries, gives up right, loses nothing."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bot.config import Config
from bot.delivery.proactive import ProactiveMessages
from bot.delivery.worker import DeliveryWorker, RetryPolicy
from bot.teams.adapter import build_authentication
from bot.teams.connector import SharedSession
from bot.teams.sender import TeamsSender
from scheduler.ratelimit import TeamsRateLimiter
from scheduler.scheduler import Scheduler
from scheduler.sendqueue import SendQueue, Ticket
from state.clock import FakeClock
from state.db import Database
from state.engagement import Engagement
from state.outbox import OutboxItem, OutboxStore
from state.preferences import Preferences
from state.references import ConversationRecord, ConversationReferences
from tests.connector_double import ConnectorDouble


@dataclass
class Rig:
    clock: FakeClock
    db: Database
    double: ConnectorDouble
    references: ConversationReferences
    store: OutboxStore
    worker: DeliveryWorker
    proactive: ProactiveMessages
    sessions: list[SharedSession]

    def new_worker(self) -> DeliveryWorker:
        limiter = TeamsRateLimiter(self.clock)
        session = SharedSession()
        authentication = build_authentication(Config(), session)
        self.sessions.append(session)
        return DeliveryWorker(
            self.store, self.references, TeamsSender(authentication, ""), SendQueue(self.clock, limiter),
            self.clock, limiter=limiter, retry=RetryPolicy(max_attempts=4, base_s=2.0), rng=random.Random(7),
        )

    async def known(self, conversation_id: str, user_id: str = "29:u1", kind: str = "personal",
                    tenant: str = "t1") -> None:
        await self.references.upsert(ConversationRecord(
            conversation_id=conversation_id, channel_id="msteams", service_url=self.double.url,
            reference={"conversation": {"id": conversation_id}}, tenant_id=tenant, conversation_type=kind,
            user_id=user_id, bot_id="28:bot", bot_name="Bot",
        ), reactivate=True)

    async def run(self, worker: DeliveryWorker | None = None, max_rounds: int = 100) -> None:
        """Send until nothing is left, moving the fake clock to each next wake-up."""
        worker = worker or self.worker
        for _ in range(max_rounds):
            worker.pump()
            await worker.idle()
            wake = worker._queue.next_wake()
            if wake is None:
                break
            if wake > self.clock.monotonic():
                self.clock.advance(wake - self.clock.monotonic())
        await worker.flush()


@pytest.fixture
async def rig(db: Database) -> AsyncIterator[Rig]:
    clock = FakeClock()
    async with ConnectorDouble(clock=clock.monotonic) as double:
        references = ConversationReferences(db, clock)
        store = OutboxStore(db, clock)
        rig = Rig(clock, db, double, references, store, None, None, [])  # type: ignore[arg-type]
        rig.worker = rig.new_worker()
        rig.proactive = ProactiveMessages(
            store, rig.worker, references, Engagement(db, clock), Preferences(db, clock), Scheduler(db, clock), clock
        )
        yield rig
        await rig.worker.stop(timeout=1)
        for session in rig.sessions:
            await session.close()


def text(message: str) -> dict[str, str]:
    return {"type": "message", "text": message}


async def test_sends_and_records_the_teams_activity_id(rig: Rig) -> None:
    for c in ("a", "b", "c"):
        await rig.known(c)
    results = await rig.proactive.enqueue([OutboxItem(text(f"hi {c}"), conversation_id=c) for c in "abc"])
    await rig.run()
    for result, c in zip(results, "abc", strict=True):
        row = await rig.store.get(result.id)
        assert row is not None and row.status == "sent" and row.activity_id
        assert rig.double.activity(c, row.activity_id)["text"] == f"hi {c}"
    assert rig.worker.counts["sent"] == 3


async def test_dedup_key_queues_once(rig: Rig) -> None:
    await rig.known("a")
    first = await rig.proactive.enqueue([OutboxItem(text("x"), conversation_id="a", dedup_key="k")])
    again = await rig.proactive.enqueue([OutboxItem(text("x"), conversation_id="a", dedup_key="k")])
    assert first[0].created and not again[0].created and again[0].id == first[0].id
    await rig.run()
    assert len(rig.double.sent_activities("a")) == 1


async def test_429_waits_for_retry_after_then_sends(rig: Rig) -> None:
    await rig.known("a")
    rig.double.fail_next("throttled")
    [result] = await rig.proactive.enqueue([OutboxItem(text("x"), conversation_id="a")])
    start = rig.clock.monotonic()
    await rig.run()
    row = await rig.store.get(result.id)
    assert row is not None and row.status == "sent" and row.attempts == 2
    sends = rig.double.find(op="send", conversation_id="a")
    assert len(sends) == 2 and sends[0].status == 429 and (sends[1].status or 0) < 300
    assert sends[1].time - start >= 1.0, "the retry must wait for Retry-After"
    assert rig.worker.counts["throttled"] == 1 and rig.worker.counts["retried"] == 1


@pytest.mark.parametrize("fault", ["service_unavailable", "bad_gateway", "gateway_timeout", "precondition_failed"])
async def test_transient_errors_are_retried_with_backoff(rig: Rig, fault: str) -> None:
    await rig.known("a")
    rig.double.fail_next(fault, count=2)
    [result] = await rig.proactive.enqueue([OutboxItem(text("x"), conversation_id="a")])
    await rig.run()
    row = await rig.store.get(result.id)
    assert row is not None and row.status == "sent" and row.attempts == 3
    times = [r.time for r in rig.double.find(op="send", conversation_id="a")]
    assert times[1] > times[0] and times[2] > times[1]


async def test_retries_are_bounded(rig: Rig) -> None:
    await rig.known("a")
    rig.double.fail_next("service_unavailable", count=None)
    [result] = await rig.proactive.enqueue([OutboxItem(text("x"), conversation_id="a")])
    await rig.run()
    row = await rig.store.get(result.id)
    assert row is not None and row.status == "failed" and row.attempts == 4 and "503" in (row.last_error or "")
    assert len(rig.double.find(op="send", conversation_id="a")) == 4


@pytest.mark.parametrize("fault", ["bad_argument", "too_big", "server_error", "bot_not_registered"])
async def test_permanent_errors_are_not_retried(rig: Rig, fault: str) -> None:
    await rig.known("a")
    rig.double.fail_next(fault)
    [result] = await rig.proactive.enqueue([OutboxItem(text("x"), conversation_id="a")])
    await rig.run()
    row = await rig.store.get(result.id)
    assert row is not None and row.status == "failed" and row.attempts == 1
    assert len(rig.double.find(op="send")) == 1


@pytest.mark.parametrize("fault", ["blocked_by_user", "not_in_roster", "disabled_by_admin", "not_found"])
async def test_gone_conversation_is_marked_inactive_and_its_rows_cancelled(rig: Rig, fault: str) -> None:
    await rig.known("gone")
    await rig.known("other", user_id="29:u2")
    rig.double.fail_next(fault, conversation_id="gone")
    results = await rig.proactive.enqueue(
        [OutboxItem(text(f"m{i}"), conversation_id="gone") for i in range(3)]
        + [OutboxItem(text("fine"), conversation_id="other")]
    )
    await rig.run()
    statuses = [(await rig.store.get(r.id)).status for r in results]  # type: ignore[union-attr]
    assert statuses == ["cancelled", "cancelled", "cancelled", "sent"]
    assert len(rig.double.find(op="send", conversation_id="gone")) == 1, "nothing more is sent there"
    record = await rig.references.get("gone")
    assert record is not None and not record.active
    # a later message there is not attempted at all
    [later] = await rig.proactive.enqueue([OutboxItem(text("later"), conversation_id="gone")])
    await rig.run()
    assert (await rig.store.get(later.id)).status == "cancelled"  # type: ignore[union-attr]
    assert len(rig.double.find(op="send", conversation_id="gone")) == 1


async def test_expired_rows_are_not_sent(rig: Rig) -> None:
    await rig.known("a")
    now = rig.clock.now().timestamp()
    [result] = await rig.proactive.enqueue(
        [OutboxItem(text("x"), conversation_id="a", expires_at=now + 10, not_before=now + 60)]
    )
    await rig.run()
    assert (await rig.store.get(result.id)).status == "expired"  # type: ignore[union-attr]
    assert rig.double.find(op="send") == []


async def test_update_replaces_the_sent_message_in_place(rig: Rig) -> None:
    await rig.known("a")
    [original] = await rig.proactive.enqueue([OutboxItem(text("working… 10%"), conversation_id="a")])
    [update] = await rig.proactive.enqueue(
        [OutboxItem(text("working… 50%"), conversation_id="a", kind="update", update_of=original.id)]
    )
    await rig.run()
    sent = await rig.store.get(original.id)
    assert sent is not None and sent.activity_id
    assert (await rig.store.get(update.id)).status == "sent"  # type: ignore[union-attr]
    assert rig.double.activity("a", sent.activity_id)["text"] == "working… 50%"
    assert len(rig.double.sent_activities("a")) == 1, "an update posts no new message"


async def test_personal_chat_is_created_once_then_reused(rig: Rig) -> None:
    await rig.known("group-1", user_id="29:ada", kind="groupChat")
    results = await rig.proactive.enqueue(
        [OutboxItem(text("one"), target_user_id="29:ada", tenant_id="t1")]
    )
    await rig.run()
    row = await rig.store.get(results[0].id)
    assert row is not None and row.status == "sent" and row.conversation_id
    [create] = rig.double.find(op="create")
    assert create.body["members"] == [{"id": "29:ada"}]
    assert create.body["channelData"] == {"tenant": {"id": "t1"}}
    dm = await rig.references.get(row.conversation_id)
    assert dm is not None and dm.conversation_type == "personal"
    await rig.proactive.enqueue([OutboxItem(text("two"), target_user_id="29:ada", tenant_id="t1")])
    await rig.run()
    assert len(rig.double.find(op="create")) == 1, "the 1:1 chat is reused"
    assert [a["text"] for a in rig.double.sent_activities(row.conversation_id)] == ["one", "two"]


async def test_unknown_user_fails_clearly(rig: Rig) -> None:
    [result] = await rig.proactive.enqueue([OutboxItem(text("x"), target_user_id="29:nobody")])
    await rig.run()
    row = await rig.store.get(result.id)
    assert row is not None and row.status == "failed" and "UnknownUser" in (row.last_error or "")


async def test_pending_rows_survive_a_restart(rig: Rig) -> None:
    await rig.known("a")
    await rig.store.enqueue([OutboxItem(text(f"m{i}"), conversation_id="a") for i in range(5)])
    fresh = rig.new_worker()  # a new process would do exactly this
    assert await fresh.load() == 5
    await rig.run(fresh)
    assert [a["text"] for a in rig.double.sent_activities("a")] == [f"m{i}" for i in range(5)]
    assert (await rig.store.counts()) == {"sent": 5}


async def test_stop_during_a_flush_does_not_hang() -> None:
    """Regression: stop() called while the loop was writing outcomes used to wait forever."""
    import asyncio

    from state.clock import SystemClock

    class IdleQueue:
        def __len__(self) -> int:
            return 0

        def next_wake(self) -> None:
            return None

        def pop_ready(self, room: int) -> list[object]:
            return []

    class SlowStore:
        def __init__(self) -> None:
            self.flushing, self.gate = asyncio.Event(), asyncio.Event()

        def subscribe(self, callback: object) -> None:
            pass

        async def tenants_with_work(self, now: float) -> set[str]:
            return set()

        async def renew_claims(self, owner: str, until: float, ids: object) -> int:
            return 0

        async def unclaim(self, owner: str, ids: object) -> int:
            return 0

        async def apply(self, outcomes: object) -> None:
            self.flushing.set()
            await self.gate.wait()

    store = SlowStore()
    worker = DeliveryWorker(store, None, None, IdleQueue(), SystemClock())  # type: ignore[arg-type]
    await worker.start()
    worker._outcomes.append(object())  # type: ignore[arg-type]
    worker._wake.set()
    await store.flushing.wait()
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.wait_for(stopping, 5)


# ---- faults: delivery that cannot die -------------------------------------------------------------------------


class Flaky:
    """Wraps an async method: the first `failures` calls raise `error`, then it passes through."""

    def __init__(self, method: object, failures: int, error: Exception) -> None:
        self.method, self.failures, self.error, self.calls = method, failures, error, 0

    async def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return await self.method(*args, **kwargs)  # type: ignore[operator]


async def test_a_failing_outcome_write_is_retried_and_loses_nothing(rig: Rig) -> None:
    import sqlite3

    for c in "abc":
        await rig.known(c)
    flaky = Flaky(rig.store.apply, 3, sqlite3.OperationalError("database is locked"))
    rig.store.apply = flaky  # type: ignore[method-assign]
    results = await rig.proactive.enqueue([OutboxItem(text(f"hi {c}"), conversation_id=c) for c in "abc"])
    rig.worker.pump()
    await rig.worker.idle()
    for _ in range(3):  # each write fails; the outcomes stay, in order
        assert await rig.worker.flush() is False
        assert [o.id for o in rig.worker._outcomes] == [r.id for r in results]
    rig.clock.advance(31)
    health = rig.worker.health()
    assert not health["ok"] and "3 delivery outcome(s) unwritten for 31 s" in health["reason"]
    assert "database is locked" in health["reason"]
    assert await rig.worker.flush() is True and rig.worker.health()["ok"]
    assert [(await rig.store.get(r.id)).status for r in results] == ["sent"] * 3  # type: ignore[union-attr]
    assert len(rig.double.find(op="send")) == 3, "nothing was sent twice"


async def test_a_database_away_for_days_still_gets_its_outcomes_written_when_it_returns(rig: Rig) -> None:
    """Failures in a row counted into the thousands (2 s apart: a day and a half) do not overflow the backoff."""
    import sqlite3

    await rig.known("a")
    flaky = Flaky(rig.store.apply, 1100, sqlite3.OperationalError("disk I/O error"))
    rig.store.apply = flaky  # type: ignore[method-assign]
    results = await rig.proactive.enqueue([OutboxItem(text("hi"), conversation_id="a")])
    rig.worker.pump()
    await rig.worker.idle()
    for _ in range(1100):
        assert await rig.worker.flush() is False
    assert await rig.worker.flush() is True
    assert (await rig.store.get(results[0].id)).status == "sent"  # type: ignore[union-attr]


async def test_an_error_in_a_pass_of_the_loop_does_not_end_delivery(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    await rig.known("a")
    queue, real_pop, calls = rig.worker._queue, rig.worker._queue.pop_ready, []

    def pop_ready(limit: int) -> list[Ticket]:
        calls.append(limit)
        if len(calls) == 1:
            raise RuntimeError("a bug in a pass")
        return real_pop(limit)

    queue.pop_ready = pop_ready  # type: ignore[method-assign]
    await rig.worker.start()  # the first pass fails
    [row] = await rig.proactive.enqueue([OutboxItem(text("still delivered"), conversation_id="a")])
    await rig.double.wait_for(lambda r: r.op == "send" and r.status == 201)
    assert not rig.worker._loop_task.done()  # type: ignore[union-attr]
    assert "delivery loop error; going on" in caplog.text
    await rig.worker.stop()
    stored = await rig.store.get(row.id)
    assert stored is not None and stored.status == "sent"


async def test_a_database_error_finding_the_target_retries_the_row_without_using_an_attempt(rig: Rig) -> None:
    import sqlite3

    await rig.known("a")
    rig.references.get = Flaky(rig.references.get, 2, sqlite3.OperationalError("database is locked"))  # type: ignore[method-assign]
    [row] = await rig.proactive.enqueue([OutboxItem(text("hi"), conversation_id="a")])
    await rig.run()
    stored = await rig.store.get(row.id)
    assert stored is not None and (stored.status, stored.attempts) == ("sent", 1)
    assert len(rig.double.find(op="send")) == 1


async def test_an_unexpected_error_in_a_send_is_retried_not_stranded(rig: Rig) -> None:
    await rig.known("a")
    sender = rig.worker._sender
    sender.send = Flaky(sender.send, 1, RuntimeError("a bug in a library"))  # type: ignore[method-assign]
    [row] = await rig.proactive.enqueue([OutboxItem(text("hi"), conversation_id="a")])
    await rig.run()
    stored = await rig.store.get(row.id)
    assert stored is not None and (stored.status, stored.attempts) == ("sent", 2)
    assert not rig.worker._rows, "no row is left in memory"
