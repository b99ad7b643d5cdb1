"""Retention (bot/retention.py) on both engines: old finished rows go, in small batches; what is needed stays."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from bot.retention import Retention
from scheduler.jobs import Job
from scheduler.scheduler import Scheduler
from state.analyses import AnalysisStore
from state.broadcasts import BroadcastStore
from state.clock import FakeClock
from state.db import Database
from state.model import Observation
from state.outbox import OutboxItem, OutboxStore, Outcome
from state.prices import PriceLog


def note(text: str, **fields: object) -> OutboxItem:
    return OutboxItem(payload={"type": "message", "text": text}, conversation_id="c1", tenant_id="t1",
                      **fields)  # type: ignore[arg-type]


async def test_old_finished_rows_go_and_what_is_still_needed_stays(db: Database) -> None:
    clock = FakeClock()
    outbox, prices, analyses = OutboxStore(db, clock), PriceLog(db, clock), AnalysisStore(db, clock)
    scheduler = Scheduler(db, clock)
    broadcasts = BroadcastStore(db, outbox, clock)
    retention = Retention(outbox, broadcasts, prices, scheduler, clock, days=30, batch=3, analyses=analyses)

    # 40 days ago: finished rows, a progress message with an update, a running analysis' acknowledgement,
    # rows still pending or held, a notify batch, a dead job, and prices of two products
    batch = await broadcasts.create("b" * 32, {"all": True}, {"type": "message", "text": "old"})
    old = [r.id for r in await outbox.enqueue([note(f"old {n}", broadcast_id=batch) for n in range(7)])]
    await broadcasts.finish(batch, resolved=7)
    await outbox.apply([Outcome(i, "sent") for i in old])
    [progress] = await outbox.enqueue([note("⏳ working")])
    [update] = await outbox.enqueue([note("✅ done", kind="update", update_of=progress.id)])
    [ack] = await outbox.enqueue([note("⏳ analysing")])
    await outbox.apply([Outcome(i, "sent") for i in (progress.id, update.id, ack.id)])
    await analyses.insert("a1", "29:ada", "c1", "t1", "gadget", clock.now().timestamp() + 10**7)
    await analyses.set_progress_row("a1", ack.id)
    for n, status in enumerate(("done", "cancelled", "failed", "done")):  # finished analyses, 40 days ago
        await analyses.insert(f"old-{n}", "29:ada", "c1", "t1", f"p{n}", clock.now().timestamp())
        await analyses.set_status(f"old-{n}", status)
    async with db.transaction() as tx:  # a user's quota lock row, untouched since
        await analyses.admit(tx, "29:bob", "t1", "x", per_user=3, per_tenant=100)
    [waiting] = await outbox.enqueue([note("still pending")])
    [held] = await outbox.enqueue([note("held", status="held")])
    dead = Job(id="dead-old", handler="h", payload={}, due_at=clock.now(), created_at=clock.now())
    await scheduler._store.insert(dead)
    await db.execute("UPDATE scheduled_jobs SET state = 'dead' WHERE id = 'dead-old'")
    for n in range(5):
        await prices.record(Observation("gadget", Decimal(10 + n), "USD", "demo", None, clock.now()))
        clock.advance(1)
    await prices.record(Observation("gizmo", Decimal(7), "USD", "demo", None, clock.now()))

    clock.advance(timedelta(days=40).total_seconds())
    [recent] = await outbox.enqueue([note("recent")])
    await analyses.insert("new", "29:ada", "c1", "t1", "new", clock.now().timestamp())
    await analyses.set_status("new", "done")
    await outbox.apply([Outcome(recent.id, "sent")])
    await prices.record(Observation("gadget", Decimal(20), "USD", "demo", None, clock.now()))

    deleted = await retention.purge()
    assert deleted == {"outbox": 9, "batches": 1, "dead_jobs": 1, "price_observations": 5, "analyses": 4,
                       "quota_locks": 2}  # bob's lock row and his tenant's
    assert await analyses.get("a1") is not None and await analyses.get("new") is not None, "running and recent stay"
    left = {r.id for r in await outbox.get_many(range(1, 100))}
    assert left == {ack.id, waiting.id, held.id, recent.id}, "the running analysis' message, live and new rows"
    assert [o.price for o in await prices.history("gadget")] == [Decimal(20)]
    assert [o.price for o in await prices.history("gizmo")] == [Decimal(7)], "a product keeps its newest price"
    assert await scheduler.get("dead-old") is None and await broadcasts.get("b" * 32) is None
    assert await retention.purge() == {"outbox": 0, "batches": 0, "dead_jobs": 0, "price_observations": 0,
                                       "analyses": 0, "quota_locks": 0}
