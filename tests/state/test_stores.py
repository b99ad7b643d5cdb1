"""Contract tests of the outbox, price log, analyses and job stores, on SQLite and PostgreSQL alike.

Races are real: two `Database`s opened on the same database (two pools on PostgreSQL, as two replicas
would have) run the contested statement at the same time, round after round; exactly one wins each time.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

from scheduler.jobs import Job
from scheduler.store import JobStore, insert_row
from state.analyses import AnalysisStore
from state.broadcasts import ANALYZE_AFTER, BroadcastStore
from state.clock import FakeClock
from state.db import Database
from state.model import Condition, Observation, UserRef
from state.outbox import OutboxItem, OutboxStore, Outcome
from state.prices import PriceLog
from state.watches import WatchStore
from tests.conftest import DatabaseOn, OpenDatabase


def note(text: str, conversation_id: str = "c1", **fields: object) -> OutboxItem:
    return OutboxItem(payload={"type": "message", "text": text}, conversation_id=conversation_id,
                      tenant_id="t1", **fields)  # type: ignore[arg-type]


# ---- outbox -------------------------------------------------------------------------------------------------


async def test_outbox_rows_keep_their_fields_and_move_through_statuses(db: Database) -> None:
    clock = FakeClock()
    store = OutboxStore(db, clock)
    results = await store.enqueue([note("a", priority=1, subject="price:x"), note("b", status="held"),
                                   note("c", conversation_id="c2")])
    assert [r.created for r in results] == [True, True, True]
    a, b, c = (r.id for r in results)
    assert a < b < c, "ids grow in enqueue order"
    row = await store.get(a)
    assert row is not None and (row.payload, row.priority, row.subject, row.status, row.tenant_id) == (
        {"type": "message", "text": "a"}, 1, "price:x", "pending", "t1")
    assert row.not_before == clock.now().timestamp() and row.created_at == clock.now().timestamp()
    assert [r.id for r in await store.pending()] == [a, c]
    assert [r.id for r in await store.held("c1")] == [b]
    assert await store.get(10_000) is None and [r.id for r in await store.get_many([c, a, 10_000])] in ([a, c], [c, a])

    clock.advance(5)
    await store.apply([Outcome(a, "sent", attempts=1, activity_id="act-1", sent_at=clock.now().timestamp()),
                       Outcome(c, "pending", attempts=1, last_error="503", not_before=clock.now().timestamp() + 9)])
    sent, retried = await store.get(a), await store.get(c)
    assert sent is not None and (sent.status, sent.activity_id, sent.attempts) == ("sent", "act-1", 1)
    assert retried is not None and (retried.status, retried.last_error, retried.not_before) == (
        "pending", "503", clock.now().timestamp() + 9)
    assert await store.set_status([b], "pending", only_from=["sent"]) == 0, "the guard holds"
    assert await store.set_status([b], "pending", only_from=["held"]) == 1
    assert await store.counts() == {"sent": 1, "pending": 2}


async def test_outbox_supersede_and_cancel_touch_only_their_conversation(db: Database) -> None:
    store = OutboxStore(db, FakeClock())
    ids = [r.id for r in await store.enqueue([
        note("old", status="held", subject="price:x"), note("other", status="held", subject="price:y"),
        note("new", status="held", subject="price:x"), note("elsewhere", conversation_id="c2", status="held",
                                                           subject="price:x")])]
    assert await store.supersede("c1", "price:x", keep=ids[2]) == 1
    assert [r.id for r in await store.held("c1")] == [ids[1], ids[2]]
    cancelled = await store.cancel_conversation("c1", "removed")
    assert sorted(cancelled) == [ids[1], ids[2]]
    assert [r.id for r in await store.held()] == [ids[3]]


async def test_outbox_rows_held_for_one_member_supersede_and_release_only_theirs(db: Database) -> None:
    store = OutboxStore(db, FakeClock())
    ids = [r.id for r in await store.enqueue([
        note("ada old", status="held", subject="price:x", target_user_id="29:ada"),
        note("bob", status="held", subject="price:x", target_user_id="29:bob"),
        note("ada new", status="held", subject="price:x", target_user_id="29:ada"),
        note("everyone", status="held", subject="price:x")])]
    assert await store.supersede("c1", "price:x", keep=ids[2], user_id="29:ada") == 1
    assert [r.id for r in await store.held("c1", user_id="29:ada")] == [ids[2]]
    assert [r.id for r in await store.held("c1", user_id="29:bob")] == [ids[1]]
    assert await store.supersede("c1", "price:x", keep=ids[3]) == 0, "an item for everyone replaces nobody's own"
    assert [r.id for r in await store.held("c1")] == [ids[1], ids[2], ids[3]]


async def test_one_dedup_key_in_one_batch_is_one_row(db: Database) -> None:
    store = OutboxStore(db, FakeClock())
    first, again = await store.enqueue([note("x", dedup_key="k"), note("x", dedup_key="k")])
    assert (first.created, again.created, again.id) == (True, False, first.id)


async def test_a_large_mixed_batch_reports_each_items_own_row(db: Database) -> None:
    store = OutboxStore(db, FakeClock())
    [taken] = await store.enqueue([note("before", dedup_key="k-taken")])
    items = []
    for n in range(1200):  # more than one INSERT's worth
        key = None if n % 3 else f"k{n // 6}"  # keyless rows, keys used twice, and one key already taken
        items.append(note(f"item {n}", dedup_key="k-taken" if n == 601 else key))
    results = await store.enqueue(items)
    first_use: dict[str, int] = {"k-taken": taken.id}
    for item, result in zip(items, results, strict=True):
        row = await store.get(result.id)
        assert row is not None
        if item.dedup_key is None or item.dedup_key not in first_use:
            assert result.created and row.payload["text"] == item.payload["text"]
            if item.dedup_key:
                first_use[item.dedup_key] = result.id
        else:
            assert not result.created and result.id == first_use[item.dedup_key]
    assert len({r.id for r in results if r.created}) == sum(r.created for r in results)


async def test_two_processes_enqueueing_one_dedup_key_make_one_row(open_database: OpenDatabase) -> None:
    one, two = OutboxStore(await open_database(), FakeClock()), OutboxStore(await open_database(), FakeClock())
    for round_ in range(25):
        key = f"broadcast-{round_}"
        [a], [b] = await asyncio.gather(one.enqueue([note("hi", dedup_key=key)]),
                                        two.enqueue([note("hi", dedup_key=key)]))
        assert sorted([a.created, b.created]) == [False, True] and a.id == b.id
    assert (await one.counts()) == {"pending": 25}


# ---- jobs ---------------------------------------------------------------------------------------------------


async def test_two_processes_claiming_one_job_exactly_one_wins(open_database: OpenDatabase) -> None:
    clock = FakeClock()
    one, two = JobStore(await open_database()), JobStore(await open_database())
    now = clock.now()
    for round_ in range(25):
        job = Job(id=f"job-{round_:03d}", handler="h", payload={}, due_at=now, created_at=now)
        await one.insert(job)
        claims = await asyncio.gather(one.claim([job.id], now, now + timedelta(seconds=30)),
                                      two.claim([job.id], now, now + timedelta(seconds=30)))
        assert sorted(len(c) for c in claims) == [0, 1], f"round {round_}: {claims}"
        [claimed] = claims[0] or claims[1]
        assert claimed.attempts == 1 and claimed.lease_until == now + timedelta(seconds=30)


async def test_scheduling_a_key_again_replaces_the_job_in_place(db: Database) -> None:
    clock = FakeClock()
    store = JobStore(db)
    now = clock.now()
    first = Job(id="a", handler="h", payload={"n": 1}, due_at=now, key="poll:x", created_at=now)
    await store.insert(first)
    assert [j.id for j in await store.claim(["a"], now, now + timedelta(seconds=5))] == ["a"]
    second = Job(id="b", handler="h", payload={"n": 2}, due_at=now + timedelta(seconds=9), key="poll:x",
                 created_at=now)
    await store.insert_many([insert_row(second)])
    stored = await store.get(key="poll:x")
    assert stored is not None and (stored.id, stored.payload, stored.state.value, stored.attempts) == (
        "b", {"n": 2}, "pending", 0)
    assert await store.complete("a") is False, "the replaced run's result is ignored"
    assert [j.key for j in await store.list_by_prefix("poll")] == ["poll:x"]
    assert await store.list_by_prefix("Poll") == [], "prefixes are case-sensitive on both engines"


# ---- prices and watches -------------------------------------------------------------------------------------


async def test_price_log_history_is_oldest_first_and_bounded(db: Database) -> None:
    clock = FakeClock()
    prices = PriceLog(db, clock)
    for n in range(5):
        await prices.record(Observation("Gadget", Decimal(f"10.{n}0"), "USD", "demo", None, clock.now()))
        clock.advance(1)
    history = await prices.history("  gadget ", limit=3)
    assert [o.price for o in history] == [Decimal("10.20"), Decimal("10.30"), Decimal("10.40")]
    latest = await prices.latest("GADGET")
    assert latest is not None and latest.price == Decimal("10.40") and latest.observed_at.tzinfo is not None
    assert await prices.latest("unknown") is None


async def test_watch_rows_record_prices_snoozes_and_owners(db: Database) -> None:
    clock = FakeClock()
    book, prices = WatchStore(db, clock), PriceLog(db, clock)
    await book.add(UserRef("29:ada"), "c1", "Gadget", Condition("below", Decimal(10)))
    await book.add(UserRef("29:bob"), "c2", "gadget", Condition("any"))
    assert await prices.watched_products() == ["gadget"]
    ada, bob = await prices.watches_on("gadget")
    await prices.saw(ada.id, Decimal("9.5"), alerted=True)
    await prices.saw(bob.id, Decimal("9.5"), alerted=False)
    ada, bob = await prices.watches_on("GADGET")
    assert (ada.last_price, ada.last_alert_price, bob.last_price, bob.last_alert_price) == (
        Decimal("9.5"), Decimal("9.5"), Decimal("9.5"), None)
    assert await prices.snooze(ada.id, "29:bob", clock.now()) is False, "only the owner"
    assert await prices.snooze(ada.id, "29:ada", clock.now() + timedelta(hours=1)) is True
    snoozed = await prices.watch(ada.id)
    assert snoozed is not None and snoozed.snoozed_until == (clock.now() + timedelta(hours=1)).timestamp()
    assert await prices.remove_watch(bob.id, "29:ada") is False and await prices.remove_watch(bob.id, "29:bob")
    assert [w.user_id for w in await prices.watches_on("gadget")] == ["29:ada"]


async def test_the_same_watch_added_twice_at_once_is_one_watch(open_database: OpenDatabase) -> None:
    clock = FakeClock()
    one, two = WatchStore(await open_database(), clock), WatchStore(await open_database(), clock)
    results = await asyncio.gather(one.add(UserRef("29:ada"), "c1", "gadget", Condition("any")),
                                   two.add(UserRef("29:ada"), "c1", "gadget", Condition("above", Decimal(3))))
    assert sorted(r.status for r in results) == ["created", "updated"]
    assert len(await one.list("29:ada")) == 1


# ---- analyses -----------------------------------------------------------------------------------------------


async def test_analysis_rows(db: Database) -> None:
    clock = FakeClock()
    store = AnalysisStore(db, clock)
    await store.insert("a1", "29:ada", "c1", "t1", " Gadget ", clock.now().timestamp() + 30)
    clock.advance(1)
    await store.insert("a2", "29:ada", "c1", "t1", "gizmo", clock.now().timestamp() + 30)
    assert await store.is_running("29:ada", "GADGET") and not await store.is_running("29:bob", "gadget")
    assert [r.id for r in await store.running("29:ada")] == ["a1", "a2"]
    assert [r.id for r in await store.running("29:ada", "gizmo")] == ["a2"]
    await store.set_progress_row("a1", 42)
    await store.set_status("a1", "done")
    row = await store.get("a1")
    assert row is not None and (row.product, row.status, row.progress_row, row.tenant_id) == ("Gadget", "done", 42,
                                                                                             "t1")
    assert [r.id for r in await store.running("29:ada")] == ["a2"] and await store.get("nope") is None


async def test_a_broadcasts_rows_read_its_payload_and_category_stored_once(db: Database) -> None:
    """A recipient row stores neither (bytes per recipient): both are the broadcast's, on every read path,
    and a cancel reports the broadcast's category for its rows."""
    clock = FakeClock()
    outbox = OutboxStore(db, clock)
    broadcasts = BroadcastStore(db, outbox, clock)
    broadcast_id = await broadcasts.create("b-1", {"all": True}, {"text": "closed on Friday"}, category="alert")
    results, _ = await broadcasts.write_page(broadcast_id, [
        OutboxItem({"text": "closed on Friday"}, conversation_id=c, tenant_id="t", category="alert",
                   broadcast_id=broadcast_id, undecided=True) for c in ("c1", "c2")],
        cursor="c2", resolved=2, done=True)
    stored = await db.fetchall("SELECT payload, category FROM outbox ORDER BY id")
    assert [(r["payload"], r["category"]) for r in stored] == [("", ""), ("", "")]
    ids = [r.id for r in results]
    fresh = OutboxStore(db, clock)  # another process: nothing cached yet
    for rows in (await fresh.get_many(ids), await fresh.pending(), [await fresh.get(ids[0])]):
        read = {(r.category, r.payload["text"], r.batch_id) for r in rows if r}
        assert read == {("alert", "closed on Friday", "b-1")}
    single = (await outbox.enqueue([note("alone", conversation_id="c1")]))[0].id
    assert await OutboxStore(db, clock).cancel_conversation("c1", "removed") == {ids[0]: "alert",
                                                                                 single: "notification"}


async def _broadcast_rows(broadcasts: BroadcastStore, public_id: str, tenants: list[str | None],
                          per_tenant: int) -> list[int]:
    """A broadcast's pending rows, the tenants' rows interleaved (as conversation ids order them), in pages."""
    broadcast_id = await broadcasts.create(public_id, {"all": True}, {"text": public_id})
    items = [OutboxItem({}, conversation_id=f"{public_id}-{i}-{n}", tenant_id=tenant, broadcast_id=broadcast_id,
                        undecided=True) for i in range(per_tenant) for n, tenant in enumerate(tenants)]
    ids: list[int] = []
    for start in range(0, len(items), 500):
        written, _ = await broadcasts.write_page(broadcast_id, items[start:start + 500], cursor=str(start),
                                                 resolved=len(items), done=start + 500 >= len(items))
        ids += [w.id for w in written]
    return ids


async def test_claims_take_a_tenants_own_rows_first_then_its_broadcasts_within_its_share(db: Database) -> None:
    """A tenant's rows outside broadcasts (alerts, replies to a request) go before a notice to everyone's rows,
    oldest first; its share of a claim covers both kinds; every row is claimed once, none of another tenant."""
    clock = FakeClock()
    outbox = OutboxStore(db, clock)
    broadcasts = BroadcastStore(db, outbox, clock)
    older = await _broadcast_rows(broadcasts, "b-older", ["t1", "t2", None], 5)
    newer = await _broadcast_rows(broadcasts, "b-newer", ["t1", "t2", ""], 5)
    singles = [r.id for r in await outbox.enqueue([note(f"alert {n}", conversation_id=f"s{n}") for n in range(3)])]
    other = (await outbox.enqueue([OutboxItem({"text": "x"}, conversation_id="o1", tenant_id="t9")]))[0].id
    now = clock.now().timestamp()
    assert await outbox.tenants_with_work(now) == {"t1", "t2", "", "t9"}

    first = await outbox.claim(["t1"], "me", now + 30, now, limit=4)
    assert [r.id for r in first] == sorted([older[0], *singles]), "its own three, then the older notice's first"
    t1_rows = [i for n, i in enumerate(older) if n % 3 == 0] + [i for n, i in enumerate(newer) if n % 3 == 0]
    taken = [r.id for r in first]
    while batch := await outbox.claim(["t1"], "me", now + 30, now, limit=4):
        assert len(batch) <= 4
        taken += [r.id for r in batch]
    assert sorted(taken) == sorted(singles + t1_rows), "each of t1's rows once, no other tenant's"
    assert [i for i in taken if i not in singles] == t1_rows, "the older notice's rows before the newer's"
    blank = await outbox.claim([""], "me", now + 30, now, limit=100)
    assert sorted(r.id for r in blank) == sorted(
        [i for n, i in enumerate(older) if n % 3 == 2] + [i for n, i in enumerate(newer) if n % 3 == 2])
    assert await outbox.tenants_with_work(now) == {"t2", "t9"}
    later = now + 31  # the claims expired: the rows are anyone's again, but only those still pending
    await outbox.apply([Outcome(i, "sent") for i in singles])
    again = await outbox.claim(["", "t1", "t9"], "you", later + 30, later, limit=100)
    assert sorted(r.id for r in again) == sorted([*t1_rows, other, *(r.id for r in blank)])


async def test_a_broadcasts_pending_rows_cost_a_few_bytes_each_in_the_claims_index(database_on: DatabaseOn) -> None:
    """PostgreSQL keeps a tenant's rows of one broadcast as one posting list (migration 23): a (tenant, id) entry
    per row in pages half full (tenants' rows interleave) cost about 70 bytes a recipient. (PostgreSQL's bytes:
    SQLite stores every entry whole and gives emptied pages back.)"""
    db = await database_on("postgresql")
    # the yardstick: the entry per row the claims index gave a broadcast's rows before, kept up as rows come
    await db.execute("CREATE INDEX yardstick ON outbox (tenant_id, id) WHERE status = 'pending'")
    clock = FakeClock()
    outbox = OutboxStore(db, clock)
    ids = await _broadcast_rows(BroadcastStore(db, outbox, clock), "b-many", [f"tenant-{n:02d}" for n in range(40)],
                                250)
    sizes = await db.fetchone("SELECT pg_relation_size('outbox_broadcast_pending') AS now, "
                              "pg_relation_size('yardstick') AS before")
    assert sizes is not None
    now, before = sizes["now"] / len(ids), sizes["before"] / len(ids)
    assert now < 12 and before > 4 * now, f"{now:.1f} bytes a recipient ({before:.1f} with an entry per row)"
    plan = await db.fetchone("EXPLAIN (FORMAT JSON) SELECT id FROM outbox WHERE status = 'pending' AND "
                             "broadcast_id IS NOT NULL AND tenant_id = 'tenant-07' AND claimed_by IS NULL "
                             "ORDER BY broadcast_id LIMIT 5")
    assert plan is not None and "outbox_broadcast_pending" in str(plan["QUERY PLAN"])


async def test_a_large_broadcast_written_leaves_postgresql_knowing_its_rows(database_on: DatabaseOn) -> None:
    """Its expansion's end analyzes the outbox: the delivery report's keyset page (`DeliveryReport.page`) walks
    the primary key, where the planner, still taking the broadcast for a few rows, sorted all of them per page."""
    db = await database_on("postgresql")
    clock = FakeClock()
    outbox = OutboxStore(db, clock)
    broadcasts = BroadcastStore(db, outbox, clock)
    ids = await _broadcast_rows(broadcasts, "b-report", [f"tenant-{n}" for n in range(10)], ANALYZE_AFTER // 10)
    await broadcasts.expanded(len(ids))
    row = await outbox.get(ids[0])
    assert row is not None
    plan = await db.fetchall("EXPLAIN SELECT o.id FROM outbox o WHERE o.broadcast_id = ? AND o.id > ? "
                             "ORDER BY o.id LIMIT ?", (row.broadcast_id, ids[len(ids) // 2], 500))
    text = " ".join(str(r["QUERY PLAN"]) for r in plan)
    assert "outbox_pkey" in text and "Sort" not in text, text
