"""Delivery workers of several replicas on one database (two connections, as two processes would have):
each row sent once, each tenant by one replica, a dead replica's tenants and rows taken over, a returning
replica's tenants handed back without duplicates. Both engines; fake clock; the connector double counts."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from bot.config import Config
from bot.delivery.ownership import Ownership, desired_owner
from bot.delivery.worker import DeliveryWorker
from bot.teams.adapter import build_authentication
from bot.teams.connector import SharedSession
from bot.teams.sender import TeamsSender
from scheduler.ratelimit import TEAMS_CONVERSATION_WINDOWS, TeamsRateLimiter, Window
from scheduler.sendqueue import SendQueue
from state.clock import FakeClock
from state.leases import Leases
from state.outbox import OutboxItem, OutboxStore
from state.references import ConversationRecord, ConversationReferences
from tests.conftest import OpenDatabase
from tests.connector_double import ConnectorDouble

TENANTS = ("tenant-a", "tenant-b", "tenant-c", "tenant-d")


@dataclass
class Cluster:
    clock: FakeClock
    double: ConnectorDouble
    open_database: OpenDatabase
    sessions: list[SharedSession] = field(default_factory=list)

    async def replica(self, name: str, claim_batch: int = 1000,
                      windows: tuple[Window, ...] = TEAMS_CONVERSATION_WINDOWS) -> DeliveryWorker:
        db = await self.open_database()
        limiter = TeamsRateLimiter(self.clock, conversation_windows=windows)
        session = SharedSession()
        self.sessions.append(session)
        worker = DeliveryWorker(
            OutboxStore(db, self.clock), ConversationReferences(db, self.clock),
            TeamsSender(build_authentication(Config(), session), ""), SendQueue(self.clock, limiter), self.clock,
            limiter=limiter, rng=random.Random(7), ownership=Ownership(Leases(db), name, self.clock, lease_s=20),
            claim_batch=claim_batch,
        )
        await worker.ownership.heartbeat()
        return worker

    async def seed(self, worker: DeliveryWorker, per_tenant: int, messages: int = 1) -> list[int]:
        references, store = worker._references, worker._store
        items = []
        for tenant in TENANTS:
            for n in range(per_tenant):
                conversation = f"{tenant}-c{n}"
                await references.upsert(ConversationRecord(
                    conversation_id=conversation, channel_id="msteams", service_url=self.double.url,
                    reference={"conversation": {"id": conversation}}, tenant_id=tenant,
                    conversation_type="personal", user_id=f"29:{conversation}", bot_id="28:bot",
                ), reactivate=True)
                items += [OutboxItem({"type": "message", "text": f"hi {conversation} #{m}"},
                                     conversation_id=conversation, tenant_id=tenant) for m in range(messages)]
        return [r.id for r in await store.enqueue(items)]

    async def drain(self, *workers: DeliveryWorker, rounds: int = 50) -> None:
        for _ in range(rounds):
            for worker in workers:
                worker.pump()
                await worker.idle()
                await worker.flush()
            if not any(len(w._queue) for w in workers):
                return

    def sends(self) -> Counter[str]:
        return Counter(r.conversation_id or "" for r in self.double.find(op="send") if r.status == 201)


@pytest.fixture
async def cluster(open_database: OpenDatabase) -> AsyncIterator[Cluster]:
    async with ConnectorDouble() as double:
        cluster = Cluster(FakeClock(), double, open_database)
        yield cluster
        for session in cluster.sessions:
            await session.close()


async def test_each_tenant_has_one_sender_and_each_row_is_sent_once(cluster: Cluster) -> None:
    a, b, c = [await cluster.replica(name) for name in ("r-a", "r-b", "r-c")]
    ids = await cluster.seed(a, per_tenant=5)
    for worker in (a, b, c):
        await worker.maintain()
    owners = {t: [w.ownership.replica_id for w in (a, b, c) if t in w.ownership.owned] for t in TENANTS}
    assert all(len(o) == 1 for o in owners.values()), owners
    assert {t: o[0] for t, o in owners.items()} == {t: desired_owner(t, ["r-a", "r-b", "r-c"]) for t in TENANTS}
    await cluster.drain(a, b, c)
    assert cluster.sends() == Counter({f"{t}-c{n}": 1 for t in TENANTS for n in range(5)})
    statuses = Counter(r.status for r in await a._store.get_many(ids))
    assert statuses == {"sent": len(ids)}


async def test_a_dead_replicas_tenants_and_rows_are_taken_over_after_the_lease(cluster: Cluster) -> None:
    a = await cluster.replica("r-a")
    await cluster.seed(a, per_tenant=4)
    await a.maintain()  # alone: it owns every tenant and claims every row
    assert a.ownership.owned == set(TENANTS) and len(a._rows) == 16
    a.pump()  # sends go out ...
    await a.idle()  # ... and are answered, but "a" is killed before it writes the outcomes or heartbeats again
    sent_before_the_kill = sum(cluster.sends().values())
    b = await cluster.replica("r-b")
    await b.maintain()
    assert b.ownership.owned == set(), "a's leases and claims still run"
    cluster.clock.advance(21)  # the lease time passes without a heartbeat from a
    await b.maintain()
    assert b.ownership.owned == set(TENANTS)
    await cluster.drain(b)
    sends = cluster.sends()
    assert set(sends) == {f"{t}-c{n}" for t in TENANTS for n in range(4)}, "nothing lost"
    duplicates = sum(n - 1 for n in sends.values())
    assert duplicates == sent_before_the_kill, "duplicates are exactly what the dead replica had sent unrecorded"


async def test_a_replica_joining_takes_its_tenants_over_without_duplicates(cluster: Cluster) -> None:
    a = await cluster.replica("r-a")
    await cluster.seed(a, per_tenant=6, messages=2)  # one send per conversation at a time: the 2nd waits
    await a.maintain()  # alone: it owns every tenant
    moving = {t for t in TENANTS if desired_owner(t, ["r-a", "r-b"]) == "r-b"}
    assert moving, "with these names some tenant moves to r-b"
    cluster.double.hold_next(None)  # a's first sends stay in flight during the handover
    a.pump()
    await cluster.double.wait_for(lambda r: r.held)
    b = await cluster.replica("r-b")
    await a.maintain()  # a sees b alive: stops starting sends for b's tenants, gives their rows back
    held = [r for r in cluster.double.requests if r.held and r.status is None]
    in_flight_moving = [r for r in held if r.conversation_id.rsplit("-c", 1)[0] in moving]  # type: ignore[union-attr]
    assert a._leaving == moving
    assert len([r for r in a._queue_rows() if r.tenant_id in moving]) == len(in_flight_moving), \
        "of the moving tenants, only the sends in flight stay"
    await b.maintain()
    assert b.ownership.owned == set(), "a keeps the leases while its sends to those tenants are in flight"
    cluster.double.clear_faults()
    cluster.double.release_held()
    await a.idle()
    await a.flush()
    await a.maintain()  # now the leases go
    await b.maintain()
    assert b.ownership.owned == moving and a.ownership.owned == set(TENANTS) - moving
    await cluster.drain(a, b)
    assert cluster.sends() == Counter({f"{t}-c{n}": 2 for t in TENANTS for n in range(6)}), "each message once"


async def test_the_new_sender_of_a_tenant_counts_the_sends_of_the_last_hour(cluster: Cluster) -> None:
    hourly = (Window(1, 3600.0),)  # one send per conversation per hour, so one earlier send blocks
    a = await cluster.replica("r-a", windows=hourly)
    await cluster.seed(a, per_tenant=1)
    await a.maintain()  # alone: it owns every tenant
    await cluster.drain(a)
    cluster.clock.advance(600)  # those sends are 10 minutes old: outside every window but the hourly one
    b = await cluster.replica("r-b", windows=hourly)
    await a.maintain()  # a sees b: hands b's tenants over (nothing in flight: the leases go at once)
    before = sum(cluster.sends().values())
    await cluster.seed(a, per_tenant=1)  # one more message per conversation
    await b.maintain()  # b takes the tenants it should send for, now that they have work
    assert b.ownership.owned, "with these names some tenant moves to r-b"
    for tenant in b.ownership.owned:
        wait = b._limiter.wait_time(f"{tenant}-c0", tenant) if b._limiter else 0.0
        assert abs(wait - (3600 * 1.02 - 600)) < 1, f"{tenant}: b counts a's send of 10 minutes ago"
    await cluster.drain(b)
    assert sum(cluster.sends().values()) == before, "nothing goes before the hour is over"


async def test_an_announced_tenant_nobody_sends_for_is_taken_by_its_owner_without_waiting(cluster: Cluster) -> None:
    a, b = await cluster.replica("r-a"), await cluster.replica("r-b")
    await a.ownership.heartbeat()  # both see both alive
    for_b = next(t for t in TENANTS if desired_owner(t, ["r-a", "r-b"]) == "r-b")
    await cluster.seed(a, per_tenant=2)
    rows = [r for r in await a._store.pending() if r.tenant_id == for_b]
    await a.offer(rows)  # a queued them (a POST on a's side): not its tenant, so it announces them
    assert for_b not in a.ownership.owned and not a._rows
    b._announced(for_b)  # the NOTIFY reaching b
    assert await b.claim_more() == len(rows), "claimed at once, not at the next maintenance pass"
    assert for_b in b.ownership.owned
    await cluster.drain(b)
    assert cluster.sends() == Counter({r.conversation_id: 1 for r in rows})


async def test_a_reply_takes_a_slot_only_on_the_replica_that_sends_for_its_tenant(cluster: Cluster) -> None:
    a, b = await cluster.replica("r-a"), await cluster.replica("r-b")
    await a.ownership.heartbeat()
    for_a = next(t for t in TENANTS if desired_owner(t, ["r-a", "r-b"]) == "r-a")
    for_b = next(t for t in TENANTS if desired_owner(t, ["r-a", "r-b"]) == "r-b")
    assert not await a.acquire_reply_slot("19:chat", for_b, 1.0), "b's tenant: the reply goes to the outbox"
    assert await a.acquire_reply_slot("19:chat", for_a, 1.0), "a's own tenant, nobody sending yet: a takes it"
    assert for_a in a.ownership.owned
    a.release_reply_slot("19:chat", for_a)
    assert not await b.acquire_reply_slot("19:other", for_a, 1.0), "a holds the tenant's lease now"


async def test_a_maintenance_pass_while_the_queue_is_full_keeps_the_wish_to_claim_more(cluster: Cluster) -> None:
    a = await cluster.replica("r-a", claim_batch=4)
    await cluster.seed(a, per_tenant=3)  # 12 rows, more than one claim's worth
    await a.maintain()
    assert len(a._queue) == 4 and a._claim_wanted, "a full claim: there may be more"
    await a.maintain()  # the maintenance timer fires before the queue drained
    assert a._claim_wanted, "still wanted: the rows left are claimed once these have gone (not minutes later)"
    for _ in range(3):
        await cluster.drain(a)
        await a.claim_more()
    await cluster.drain(a)
    assert sum(cluster.sends().values()) == 12


async def test_claims_are_renewed_by_id_for_the_rows_a_replica_still_holds(cluster: Cluster) -> None:
    """Renewal names the rows (no index on `claimed_by`): those renewed stay the holder's past the first lease,
    the others can be claimed by another replica once their claim has expired."""
    a = await cluster.replica("r-a")
    ids = await cluster.seed(a, per_tenant=2)
    store, now = a._store, cluster.clock.now().timestamp()
    claimed = await store.claim(list(TENANTS), "r-a", now + 20, now)
    assert sorted(r.id for r in claimed) == sorted(ids)
    kept, let_go = ids[:3], ids[3:]
    assert await store.renew_claims("r-a", now + 40, kept) == 3
    assert await store.renew_claims("r-b", now + 40, let_go) == 0, "only the holder renews"
    later = now + 30  # the first lease has run out
    taken = await store.claim(list(TENANTS), "r-b", later + 20, later)
    assert sorted(r.id for r in taken) == sorted(let_go)
    assert await store.unclaim("r-a", ids) == 3, "a hands back only what it still holds"


async def test_a_replica_renews_the_claims_of_rows_whose_outcome_is_not_written_yet(cluster: Cluster) -> None:
    a = await cluster.replica("r-a")
    ids = await cluster.seed(a, per_tenant=2)
    await a.maintain()  # alone: owns every tenant and claims every row
    assert sorted(a._held_ids()) == sorted(ids)
    a.pump()
    await a.idle()  # sent; the outcomes wait to be written
    assert not a._rows and sorted(a._held_ids()) == sorted(ids)
    cluster.clock.advance(15)
    await a.maintain()  # renews the claims of the rows it sent but has not recorded yet
    cluster.clock.advance(15)  # past the first lease, within the renewed one
    now = cluster.clock.now().timestamp()
    assert await a._store.claim(list(TENANTS), "r-b", now + 20, now) == [], "nobody else may send them again"
    await a.flush()
    assert cluster.sends() == Counter({f"{t}-c{n}": 1 for t in TENANTS for n in range(2)})
    assert a._held_ids() == []
