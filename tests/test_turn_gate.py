"""One turn per conversation at a time across replicas: two gates (two replicas) on one database, both engines."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.metrics import Metrics
from bot.turn_gate import TurnGate
from state.clock import FakeClock
from state.db import Database
from state.leases import TurnLeases


class CountingLeases(TurnLeases):
    """TurnLeases that says when a take was refused (so a test waits for "it is waiting", not for time)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.refused = asyncio.Event()

    async def take(self, conversation_id: str, owner: str, until: float, now: float) -> bool:
        taken = await super().take(conversation_id, owner, until, now)
        if not taken:
            self.refused.set()
        return taken


def gate(db: Database, replica: str, clock: FakeClock, *, shared: bool = True,
         leases: TurnLeases | None = None, metrics: Metrics | None = None) -> TurnGate:
    return TurnGate(leases or TurnLeases(db), replica, clock, shared=lambda: shared, poll_s=0.01, metrics=metrics)


async def test_a_conversations_turn_on_another_replica_waits_until_the_first_ends(db: Database) -> None:
    clock = FakeClock()
    waiting = CountingLeases(db)
    metrics = Metrics()
    first, second = gate(db, "replica-1", clock), gate(db, "replica-2", clock, leases=waiting, metrics=metrics)
    log: list[str] = []
    release, one_started = asyncio.Event(), asyncio.Event()

    async def turn(g: TurnGate, name: str, conversation: str, hold: asyncio.Event | None = None) -> None:
        async with g.turn(conversation):
            log.append(f"{name} starts")
            if hold is not None:
                one_started.set()
                await hold.wait()
            log.append(f"{name} ends")

    one = asyncio.create_task(turn(first, "one", "19:c1", release))
    await asyncio.wait_for(one_started.wait(), 10)
    two = asyncio.create_task(turn(second, "two", "19:c1"))
    await asyncio.wait_for(waiting.refused.wait(), 10)
    await asyncio.wait_for(turn(second, "other conversation", "19:c2"), 10)  # not held up by 19:c1
    assert "two starts" not in log, "the second replica's turn waits while the first holds the conversation"
    release.set()
    await asyncio.wait_for(asyncio.gather(one, two), 10)
    assert log == ["one starts", "other conversation starts", "other conversation ends", "one ends",
                   "two starts", "two ends"]
    assert _waits(metrics) == {"ran_after": 1.0}


async def test_a_lease_left_by_a_replica_that_died_mid_turn_runs_out(db: Database) -> None:
    clock = FakeClock()
    leases = TurnLeases(db)
    now = clock.now().timestamp()
    assert await leases.take("19:c1", "dead-replica", now + 30, now)
    clock.advance(31)
    entered = False
    async with gate(db, "replica-2", clock).turn("19:c1"):
        entered = True
        later = clock.now().timestamp()
        assert not await leases.take("19:c1", "replica-3", later + 30, later), "now held by replica-2"
    assert entered
    assert await leases.take("19:c1", "replica-3", later + 30, later), "given back after the turn"


async def test_a_turn_that_waited_too_long_runs_anyway_and_says_so(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    leases = CountingLeases(db)
    now = clock.now().timestamp()
    assert await leases.take("19:c1", "stuck-replica", now + 30, now)
    metrics = Metrics()
    waiter = asyncio.create_task(_enter(gate(db, "replica-2", clock, leases=leases, metrics=metrics), "19:c1"))
    await asyncio.wait_for(leases.refused.wait(), 10)
    clock.advance(10)  # the wait limit (the lease itself has 20 s left)
    with caplog.at_level(logging.WARNING, logger="bot.turn_gate"):
        assert await asyncio.wait_for(waiter, 10)
    assert "runs anyway" in caplog.text
    assert _waits(metrics) == {"gave_up": 1.0}


async def test_alone_a_replica_takes_no_lease(db: Database) -> None:
    clock = FakeClock()
    leases = TurnLeases(db)
    async with gate(db, "replica-1", clock, shared=False).turn("19:c1"):
        now = clock.now().timestamp()
        assert await leases.take("19:c1", "replica-2", now + 30, now), "nothing was written for the turn"


async def _enter(g: TurnGate, conversation: str) -> bool:
    async with g.turn(conversation):
        return True


async def test_a_lease_that_cannot_be_given_back_does_not_fail_the_finished_turn(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(TurnLeases):
        async def give_back(self, conversation_id: str, owner: str) -> None:
            raise ConnectionError("database went away")

    with caplog.at_level(logging.WARNING, logger="bot.turn_gate"):
        assert await _enter(gate(db, "replica-1", FakeClock(), leases=Failing(db)), "19:c1")
    assert "could not give the turn lease back" in caplog.text


def _waits(metrics: Metrics) -> dict[str, float]:
    return {s.labels["outcome"]: s.value for m in metrics.registry.collect() if m.name == "bot_turn_lease_waits"
            for s in m.samples if s.name == "bot_turn_lease_waits_total"}
