"""The outbox's counts (/metrics, /healthz?detail=1, a notice's estimated finish) are right for single rows and
broadcast rows in every status, and cost the same whether a broadcast has a thousand recipients or a million:
the work the statements do is measured (SQLite's virtual machine steps, PostgreSQL's EXPLAIN ANALYZE rows),
not timed."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from state.broadcasts import BroadcastStore
from state.clock import FakeClock
from state.db import Database, Params, Row
from state.migrations import BROADCAST_STATUSES
from state.notices import NoticeControl
from state.outbox import OutboxItem, OutboxStore
from state.outbox_counts import PENDING_CAP, TenantQueue, busiest_queue
from tests.conftest import StartBot, bot_url
from tests.test_metrics import scrape, value
from tests.test_notify import AUTH, TOKEN

LATER = 10 * 24 * 3600  # rows due this far ahead stay pending while a test runs (the worker leaves them)
BIG = "b" * 32  # the public id of the broadcast with many rows in one tenant
TENANTS: tuple[str | None, ...] = ("t-a", "t-b", "", None)


async def mixed_rows(outbox: OutboxStore, broadcasts: BroadcastStore, clock: FakeClock, *,
                     big: int = 0) -> Counter[str]:
    """Single rows in every status, two broadcasts' rows in every status (one still expanding), a held row
    released again, and (`big`) one tenant with `big` pending broadcast rows; returns the rows per status."""
    later = clock.now().timestamp() + LATER
    expected: Counter[str] = Counter()
    for n, status in enumerate(BROADCAST_STATUSES):
        clock.advance(1)
        made = await outbox.enqueue([
            OutboxItem({"type": "message", "text": status}, conversation_id=f"c-{status}-{i}",
                       tenant_id=TENANTS[i % len(TENANTS)], not_before=later) for i in range(n + 1)])
        if status != "pending":
            assert await outbox.set_status([m.id for m in made], status) == n + 1
        expected[status] += n + 1
    for b in range(2):
        clock.advance(1)
        broadcast = await broadcasts.create(f"{b:032x}", {"all": True}, {"type": "message", "text": "hi"})
        items = [OutboxItem({}, conversation_id=f"r-{b}-{i}", tenant_id=TENANTS[i % len(TENANTS)],
                            broadcast_id=broadcast, undecided=True, not_before=later) for i in range(40)]
        written, _ = await broadcasts.write_page(broadcast, items, cursor="x", resolved=40, done=b == 0)
        ids = [w.id for w in written]
        for n, status in enumerate(BROADCAST_STATUSES[1:]):  # two rows of every other status each
            assert await outbox.set_status(ids[2 * n:2 * n + 2], status) == 2
            expected[status] += 2
        expected["pending"] += 40 - 2 * (len(BROADCAST_STATUSES) - 1)
        assert await outbox.set_status(ids[0:1], "pending", only_from=["held"]) == 1  # a held one released
        expected["held"] -= 1
        expected["pending"] += 1
    if big:
        clock.advance(1)
        broadcast = await broadcasts.create(BIG, {"all": True}, {"type": "message", "text": "all"})
        await broadcasts.write_page(broadcast, [
            OutboxItem({}, conversation_id=f"big-{i}", tenant_id="t-big", broadcast_id=broadcast, undecided=True,
                       not_before=later) for i in range(big)], cursor="x", resolved=big, done=True)
        expected["pending"] += big
    return expected


async def every_row(db: Database) -> dict[str, int]:
    """The counts as a full scan finds them (the yardstick, never what the bot runs)."""
    return {str(r["status"]): int(r["n"])
            for r in await db.fetchall("SELECT status, COUNT(*) AS n FROM outbox GROUP BY status")}


async def every_queue(db: Database) -> dict[str | None, tuple[int, float]]:
    """Pending rows per tenant ('' and none as one) and the first-queued one's time, by a full scan."""
    found: dict[str | None, tuple[int, float]] = {}
    for r in await db.fetchall("SELECT tenant_id, COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox "
                               "WHERE status = 'pending' GROUP BY tenant_id"):
        key = r["tenant_id"] or None
        n, oldest = found.get(key, (0, float("inf")))
        found[key] = (n + int(r["n"]), min(oldest, float(r["oldest"])))
    return found


# ---- right numbers ----------------------------------------------------------------------------------------------


async def test_counts_add_single_rows_and_broadcast_counters_in_every_status(db: Database) -> None:
    clock = FakeClock()
    outbox = OutboxStore(db, clock)
    broadcasts = BroadcastStore(db, outbox, clock)
    expected = await mixed_rows(outbox, broadcasts, clock)
    assert set(expected) == set(BROADCAST_STATUSES) and all(expected.values())
    assert await outbox.counts() == dict(expected) == await every_row(db)


async def test_tenant_queues_count_each_tenant_up_to_the_cap_with_its_first_queued_row(db: Database) -> None:
    clock = FakeClock()
    outbox = OutboxStore(db, clock)
    await mixed_rows(outbox, BroadcastStore(db, outbox, clock), clock, big=30)
    truth = await every_queue(db)
    assert set(truth) == {"t-a", "t-b", None, "t-big"} and truth["t-big"][0] == 30
    for cap in (PENDING_CAP, 25, 1):
        queues = {q.tenant_id: (q.pending, q.oldest_created_at) for q in await outbox.tenant_queues(cap)}
        assert queues == {t: (min(cap, n), oldest) for t, (n, oldest) in truth.items()}, f"cap {cap}"


async def test_retention_lowers_a_broadcasts_counters_with_the_rows_it_deletes(db: Database) -> None:
    clock = FakeClock()
    outbox = OutboxStore(db, clock)
    broadcasts = BroadcastStore(db, outbox, clock)
    broadcast = await broadcasts.create("b-old", {"all": True}, {"type": "message", "text": "old"})
    written, _ = await broadcasts.write_page(broadcast, [
        OutboxItem({}, conversation_id=f"o-{i}", tenant_id="t-a", broadcast_id=broadcast) for i in range(7)],
        cursor="x", resolved=7, done=True)
    await outbox.set_status([w.id for w in written[:5]], "sent")
    await outbox.set_status([w.id for w in written[5:]], "failed")
    await outbox.enqueue([OutboxItem({"type": "message", "text": "single"}, conversation_id="s", tenant_id="t-a")])
    clock.advance(3600)
    assert await broadcasts.purge_rows(clock.now().timestamp(), limit=3) == 3  # a sweep half-way
    assert await outbox.counts() == await every_row(db) and sum((await outbox.counts()).values()) == 5
    while await broadcasts.purge_rows(clock.now().timestamp(), limit=3):
        pass
    assert await outbox.counts() == await every_row(db) == {"pending": 1}
    stored = await broadcasts.get_by_id(broadcast)
    assert stored is not None and stored.counts == {}, "its counters count the rows there are"


def test_the_busiest_queue_is_exact_under_the_cap_and_shares_the_rest_evenly_over_it() -> None:
    under = [TenantQueue("a", 40, 1.0), TenantQueue("b", 7, 2.0)]
    assert busiest_queue(under, 47, cap=100) == 40
    assert busiest_queue([], 0, cap=100) == 0
    over = [TenantQueue("a", 100, 1.0), TenantQueue("b", 100, 1.0), TenantQueue("c", 60, 1.0)]
    assert busiest_queue(over, 60 + 2 * 5000, cap=100) == 5000, "10,000 rows beyond c's, over a and b"
    assert busiest_queue(over, 60 + 150, cap=100) == 100, "never below what was counted"


async def test_metrics_and_healthz_report_the_mix_and_cap_each_tenants_queue(
    start_bot: StartBot, http: aiohttp.ClientSession, fake_clock: FakeClock,
) -> None:
    app = await start_bot()
    expected = await mixed_rows(app.outbox, app.broadcast_store, fake_clock, big=PENDING_CAP + 100)
    assert dict(expected) == await every_row(app.db)
    samples = await scrape(http, app)
    assert {status: value(samples, "bot_outbox_rows", status=status) for status in BROADCAST_STATUSES} == expected
    now = fake_clock.now().timestamp()
    gauges = {dict(labels)["tenant"]: v for (name, labels), v in samples.items() if name == "bot_queue_pending"}
    ages = {dict(labels)["tenant"]: v for (name, labels), v in samples.items()
            if name == "bot_queue_oldest_pending_seconds"}
    truth = await every_queue(app.db)
    assert gauges == {t or "none": min(PENDING_CAP, n) for t, (n, _) in truth.items()}
    assert gauges["t-big"] == PENDING_CAP, "counted up to the cap"
    assert ages == {t or "none": now - oldest for t, (_, oldest) in truth.items()}
    async with http.get(bot_url(app, "/metrics")) as response:
        assert f"counted up to {PENDING_CAP} per tenant" in await response.text(), "the help text says so"
    async with http.get(bot_url(app, "/healthz?detail=1")) as response:
        assert response.status == 200
        assert (await response.json())["outbox"] == dict(expected)


async def test_a_notice_estimates_its_finish_from_the_busiest_queue(
    start_bot: StartBot, http: aiohttp.ClientSession, fake_clock: FakeClock,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    await mixed_rows(app.outbox, app.broadcast_store, fake_clock, big=PENDING_CAP + 100)
    small = await app.broadcast_store.get(f"{0:032x}")
    assert small is not None
    rps = app.config.tenant_rps
    now = fake_clock.now().timestamp()

    async def estimate(public_id: str) -> float:
        async with http.get(bot_url(app, f"/api/notify/batches/{public_id}"), headers=AUTH) as response:
            assert response.status == 200, await response.text()
            return datetime.fromisoformat((await response.json())["estimatedFinishAt"]).timestamp() - now

    assert await estimate(BIG) == (PENDING_CAP + 100) / rps, "one tenant over the cap: its queue, exactly"
    assert await estimate(f"{0:032x}") == small.counts["pending"] / rps, "no more than its own rows"


# ---- bounded work ---------------------------------------------------------------------------------------------


class Recording:
    """A `Database` that notes every statement read through it (the counting code reads, never writes)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.statements: list[tuple[str, Params]] = []

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        self.statements.append((sql, params))
        return await self._db.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        self.statements.append((sql, params))
        return await self._db.fetchone(sql, params)


def _rows_visited(plan: dict[str, Any]) -> int:
    """Rows PostgreSQL's scans produced or filtered away, over every loop, in an EXPLAIN ANALYZE plan."""
    own = 0
    if "Scan" in plan["Node Type"]:
        own = int((plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * plan.get("Actual Loops", 1))
    return own + sum(_rows_visited(p) for p in plan.get("Plans", ()))


async def work(db: Database, statements: Sequence[tuple[str, Params]]) -> int:
    """What the statements cost, run again and measured, not timed: SQLite's virtual machine steps (in
    hundreds), PostgreSQL's rows visited by scans."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0  # go on

    total = 0
    for sql, params in statements:
        if db.engine == "sqlite":
            conn = getattr(db, "inner", db).conn  # (under the availability watch)
            await conn.set_progress_handler(tick, 100)
            try:
                await db.fetchall(sql, params)
            finally:
                await conn.set_progress_handler(None, 100)
        else:
            row = await db.fetchone(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
            assert row is not None
            plan = row["QUERY PLAN"]
            total += _rows_visited((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
    return total + steps[0]


async def measured(db: Database, read: Callable[[Database], Awaitable[object]]) -> int:
    recording = Recording(db)
    await read(recording)  # type: ignore[arg-type]  # (reads only)
    assert recording.statements
    if db.engine == "postgresql":
        await db.execute("ANALYZE outbox")  # as autovacuum does after a broadcast's pages; plans follow the sizes
    return await work(db, recording.statements)


async def _grow(outbox: OutboxStore, broadcasts: BroadcastStore, broadcast: int, tenants: Sequence[str | None],
                start: int, per_tenant: int) -> None:
    for tenant in tenants:
        for first in range(start, start + per_tenant, 2000):
            await broadcasts.write_page(broadcast, [
                OutboxItem({}, conversation_id=f"g-{tenant}-{i}", tenant_id=tenant, broadcast_id=broadcast,
                           undecided=True) for i in range(first, min(start + per_tenant, first + 2000))],
                cursor=f"{tenant}-{first}", resolved=per_tenant, done=False)


async def test_counting_costs_the_same_for_a_broadcast_five_times_larger(db: Database) -> None:
    clock = FakeClock()
    outbox = OutboxStore(db, clock)
    broadcasts = BroadcastStore(db, outbox, clock)
    await mixed_rows(outbox, broadcasts, clock)
    broadcast = await broadcasts.create("b-large", {"all": True}, {"type": "message", "text": "everyone"})
    tenants = ("t-a", "t-b", None)
    await _grow(outbox, broadcasts, broadcast, tenants, 0, PENDING_CAP + 100)

    async def every_count(on: Database) -> None:  # what /metrics, /healthz?detail=1 and a batch's status read
        await OutboxStore(on, clock).counts()
        await OutboxStore(on, clock).tenant_queues()
        await NoticeControl(on, clock).busiest_queue()

    async def full_scan(on: Database) -> None:
        await every_row(on)

    before = await measured(db, every_count)
    scan_before = await measured(db, full_scan)
    await _grow(outbox, broadcasts, broadcast, tenants, PENDING_CAP + 100, 4 * (PENDING_CAP + 100))
    after = await measured(db, every_count)
    scan_after = await measured(db, full_scan)

    assert scan_after > 4 * scan_before, f"the yardstick sees a scan grow: {scan_before} -> {scan_after}"
    assert after <= before * 1.05 + 10, f"the counts' work grew with the recipients: {before} -> {after}"
    assert await outbox.counts() == await every_row(db), "and they stay right"


async def test_the_status_of_a_notice_to_everyone_does_not_read_its_rows_for_the_reach_view(
    start_bot: StartBot, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    looked_up: list[str] = []
    steps = app.reach.batch_steps

    async def counted(batch_id: str) -> dict[str, int]:
        looked_up.append(batch_id)
        return await steps(batch_id)

    monkeypatch.setattr(app.reach, "batch_steps", counted)
    everyone, listed = "e" * 32, "f" * 32
    await app.broadcast_store.create(everyone, {"all": True}, {"type": "message", "text": "all"})
    await app.broadcast_store.create(listed, {"users": ["00000000-0000-0000-0000-000000000001"], "tenantId": "t-a"},
                                     {"type": "message", "text": "one"})
    for public_id in (everyone, listed):
        async with http.get(bot_url(app, f"/api/notify/batches/{public_id}"), headers=AUTH) as response:
            assert response.status == 200, await response.text()
    assert looked_up == [listed], "people reached through bot/reach are only in listed, team or group notices"
