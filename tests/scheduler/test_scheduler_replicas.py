"""Several schedulers (replicas) on one database: each job runs once, long runs keep their lease, and what a
dead replica scheduled or was running is picked up by the others. Both engines, fake clock, no sleeps."""

from __future__ import annotations

import asyncio
from collections import Counter

from scheduler import FakeClock, Job, Scheduler
from tests.conftest import OpenDatabase


async def replica(open_database: OpenDatabase, clock: FakeClock, owner: str, handlers: dict[str, object],
                  **options: object) -> Scheduler:
    scheduler = Scheduler(await open_database(), clock, owner=owner, **options)  # type: ignore[arg-type]
    for name, handler in handlers.items():
        scheduler.register(name, handler)  # type: ignore[arg-type]
    await scheduler.start()
    return scheduler


async def test_jobs_scheduled_on_one_replica_run_once_across_three(open_database: OpenDatabase) -> None:
    clock, runs = FakeClock(), Counter[str]()

    async def count(job: Job) -> None:
        runs[str(job.payload["n"])] += 1

    replicas = [await replica(open_database, clock, f"r{i}", {"count": count}) for i in range(3)]
    try:
        for n in range(60):
            await replicas[n % 3].schedule_in(1, "count", {"n": n})
        clock.advance(2)
        await asyncio.gather(*(r.run_due() for r in replicas))
        assert runs == Counter({str(n): 1 for n in range(60)})
    finally:
        for r in replicas:
            await r.stop(timeout=0)


async def test_a_long_run_keeps_its_lease_and_a_dead_replicas_run_is_taken_over(open_database: OpenDatabase) -> None:
    clock, started, release = FakeClock(), asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def slow(job: Job) -> None:
        runs.append(job.payload["who"])
        started.set()
        if job.payload["who"] == "first":
            await release.wait()

    async def quick(job: Job) -> None:
        runs.append(job.payload["who"])

    a = await replica(open_database, clock, "a", {"slow": slow}, lease_seconds=30)
    b = await replica(open_database, clock, "b", {"slow": quick}, lease_seconds=30)
    try:
        job = await a.schedule_in(0, "slow", {"who": "first"})
        await a.tick()
        await started.wait()
        for _ in range(4):  # two minutes of a handler that keeps running: its heartbeat renews the lease
            clock.advance(30 - 1)
            await a.sync()
            await b.run_due()
        assert runs == ["first"], "a live replica's run is never taken over"

        clock.advance(31)  # replica a stops heartbeating (as if killed): its lease runs out
        await b.run_due()
        assert runs == ["first", "first"] and await b.get(job.id) is None, "b ran and completed it"
        release.set()  # a's handler finally returns: its result is not recorded (b holds the claim)
        await a.run_due()
        assert await a.get(job.id) is None and runs == ["first", "first"]
    finally:
        release.set()
        await a.stop(timeout=0)
        await b.stop(timeout=0)
