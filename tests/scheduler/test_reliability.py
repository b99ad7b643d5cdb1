"""Restarts, leases, misfires, retries, the concurrency bound and graceful stop, all on a fake clock."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from sched_support import MakeScheduler, Recorder

from scheduler import FakeClock, Job, JobState, Misfire, Scheduler
from scheduler.store import JobStore
from state.db import Database
from tests.conftest import OpenDatabase


async def test_pending_jobs_survive_a_restart(
    db: Database, open_database: OpenDatabase, make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    first = await make_scheduler()
    await first.schedule_in(10, "record", {"n": 1})
    await first.schedule_every(30, "record", {"n": "every"}, key="poll")
    await first.stop()
    await db.close()
    reopened = await open_database()
    try:
        second = Scheduler(reopened, clock)
        second.register("record", recorder)
        await second.start()
        clock.advance(30)
        await second.run_due()
        assert sorted(map(str, recorder.seen)) == ["1", "every"]
        assert (await second.get(key="poll")) is not None, "a repeating job stays"
        await second.stop()
    finally:
        await reopened.close()


async def test_a_crashed_run_is_retried_after_its_lease_expires(
    db: Database, make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    writer = await make_scheduler(start=False)
    job = await writer.schedule_in(0, "record", {"n": "crashed"})
    # A process claims the job, starts the handler and dies: the row stays running with its lease.
    claimed = await JobStore(db).claim([job.id], clock.now(), clock.now() + timedelta(seconds=60))
    assert [j.attempts for j in claimed] == [1]

    scheduler = await make_scheduler(lease_seconds=60)
    clock.advance(59)
    assert await scheduler.run_due() == 0, "the lease has not expired: the run may still be alive"
    clock.advance(1)
    await scheduler.run_due()  # (the real timer may start it first: what ran is checked, not the count)
    assert [r[:2] for r in recorder.runs] == [("crashed", 2)], "run once more; the crashed attempt counts"
    assert await scheduler.get(job.id) is None


async def test_expired_leases_are_reclaimed_at_start(
    db: Database,
    make_scheduler: MakeScheduler,
    clock: FakeClock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = await make_scheduler(start=False)
    job = await writer.schedule_in(0, "record", {"n": "crashed"})
    await JobStore(db).claim([job.id], clock.now(), clock.now() + timedelta(seconds=60))
    clock.advance(120)
    scheduler = await make_scheduler()
    stored = await scheduler.get(job.id)
    assert stored is not None and stored.state is JobState.PENDING
    assert "were running when the process died" in caplog.text
    await scheduler.run_due()
    assert recorder.seen == ["crashed"]


async def test_a_job_that_keeps_killing_the_process_ends_dead(
    db: Database, make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    writer = await make_scheduler(start=False)
    job = await writer.schedule_in(0, "record", {"n": "poison"})
    store = JobStore(db)
    for _ in range(3):
        await store.claim([job.id], clock.now(), clock.now() + timedelta(seconds=1))
        clock.advance(1)
    scheduler = await make_scheduler(max_attempts=3)
    await scheduler.run_due()
    assert recorder.runs == []
    [dead] = await scheduler.dead_jobs()
    assert dead.id == job.id and "lease expired" in (dead.last_error or "")


async def test_run_late_runs_a_late_job_once_and_coalesces_missed_slots(
    make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = await make_scheduler(misfire_grace_s=5)
    start = clock.now()
    await scheduler.schedule_in(10, "record", {"n": "once"})
    poll = await scheduler.schedule_every(10, "record", {"n": "poll"})
    clock.advance(95)  # nine slots of the poll were missed
    await scheduler.run_due()
    assert sorted(recorder.seen) == ["once", "poll"], "missed slots coalesce: no burst"
    assert "late" in caplog.text
    stored = await scheduler.get(poll.id)
    assert stored is not None and stored.due_at == start + timedelta(seconds=100), "original cadence"
    clock.advance(5)
    await scheduler.run_due()
    assert recorder.seen.count("poll") == 2


async def test_skip_drops_late_runs_but_keeps_the_series(
    make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    scheduler = await make_scheduler()
    start = clock.now()
    on_time = await scheduler.schedule_in(10, "record", {"n": "on time"}, misfire=Misfire.SKIP, grace_s=5)
    late = await scheduler.schedule_in(1, "record", {"n": "late"}, misfire="skip", grace_s=5)
    poll = await scheduler.schedule_every(10, "record", {"n": "poll"}, misfire=Misfire.SKIP, grace_s=5)
    clock.advance(12)  # on_time is 2 s late (within grace), late is 11 s late, poll 2 s late
    await scheduler.run_due()
    assert sorted(recorder.seen) == ["on time", "poll"]
    assert await scheduler.get(late.id) is None and await scheduler.get(on_time.id) is None
    clock.advance(43)  # now 55: the poll's slot at 20 is 35 s late: skipped, next slot 60
    await scheduler.run_due()
    clock.advance(5)  # now 60: on time
    await scheduler.run_due()
    clock.advance(17)  # now 77: the slot at 70 is 7 s late: skipped, next slot 80
    await scheduler.run_due()
    assert recorder.seen.count("poll") == 2
    stored = await scheduler.get(poll.id)
    assert stored is not None and stored.due_at == start + timedelta(seconds=80) and stored.attempts == 0


async def test_a_failing_handler_is_retried_with_backoff_then_kept_dead(
    make_scheduler: MakeScheduler, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    async def flaky(job: Job) -> None:
        attempts.append(job.attempts)
        raise ConnectionError(f"service down ({job.attempts})")

    scheduler = await make_scheduler(handlers={"flaky": flaky}, max_attempts=3, retry_base_s=10)
    job = await scheduler.schedule_in(0, "flaky", {"to": "u1"})
    await scheduler.run_due()
    assert job.id in caplog.text, "the failure is logged with the job id"
    stored = await scheduler.get(job.id)
    assert stored is not None
    assert (stored.state, stored.attempts, stored.last_error) == (
        JobState.PENDING,
        1,
        "ConnectionError: service down (1)",
    )
    assert stored.due_at == clock.now() + timedelta(seconds=10)
    clock.advance(9)
    assert await scheduler.run_due() == 0
    clock.advance(1)
    await scheduler.run_due()
    clock.advance(19)
    assert await scheduler.run_due() == 0, "the second retry waits twice as long"
    clock.advance(1)
    await scheduler.run_due()
    assert attempts == [1, 2, 3]
    clock.advance(3600)
    assert await scheduler.run_due() == 0, "dead jobs never run again"
    [dead] = await scheduler.dead_jobs()
    assert (dead.id, dead.state, dead.payload, dead.last_error) == (
        job.id,
        JobState.DEAD,
        {"to": "u1"},
        "ConnectionError: service down (3)",
    )
    assert [j.state for j in await scheduler.list_jobs()] == [JobState.DEAD], "listable, not dropped"


async def test_a_success_after_failures_resets_a_repeating_job(make_scheduler: MakeScheduler, clock: FakeClock) -> None:
    calls: list[int] = []

    async def once_flaky(job: Job) -> None:
        calls.append(job.attempts)
        if len(calls) == 1:
            raise RuntimeError("first poll fails")

    scheduler = await make_scheduler(handlers={"poll": once_flaky})
    job = await scheduler.schedule_every(60, "poll", first_in=0)
    await scheduler.run_due()
    clock.advance(10)
    await scheduler.run_due()
    stored = await scheduler.get(job.id)
    assert calls == [1, 2]
    assert stored is not None and (stored.attempts, stored.last_error) == (0, None)
    assert stored.due_at == job.due_at + timedelta(seconds=60)


async def test_running_handlers_never_exceed_the_concurrency_bound(
    make_scheduler: MakeScheduler, clock: FakeClock
) -> None:
    release = asyncio.Event()
    active, peak, done = 0, 0, 0

    async def slow(job: Job) -> None:
        nonlocal active, peak, done
        active += 1
        peak = max(peak, active)
        await release.wait()
        active -= 1
        done += 1

    scheduler = await make_scheduler(handlers={"slow": slow}, max_concurrency=2)
    for _ in range(5):
        await scheduler.schedule_in(0, "slow")
    await scheduler.tick()
    for _ in range(5):
        await asyncio.sleep(0)  # let the handlers (and the timer's dispatch) run as far as they can
    assert len(scheduler.running) == 2 and await scheduler.tick() == 0
    release.set()
    await scheduler.run_due()
    assert (done, peak) == (5, 2)


async def test_an_unknown_handler_is_logged_once_and_the_job_kept(
    make_scheduler: MakeScheduler, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    old_version = await make_scheduler(handlers={"legacy": lambda job: asyncio.sleep(0)}, start=False)
    kept = [await old_version.schedule_in(1, "legacy", {"i": i}) for i in range(3)]
    caplog.set_level(logging.WARNING, logger="scheduler")
    new_version = await make_scheduler()
    lines = [r.getMessage() for r in caplog.records if "legacy" in r.getMessage()]
    assert len(lines) == 1 and "3 job(s)" in lines[0] and "kept" in lines[0]
    clock.advance(10)
    await new_version.run_due()
    for job in kept:
        stored = await new_version.get(job.id)
        assert stored is not None and stored.state is JobState.PENDING


async def test_stop_waits_for_running_handlers(make_scheduler: MakeScheduler, clock: FakeClock) -> None:
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(job: Job) -> None:
        await release.wait()
        finished.append(job.id)

    scheduler = await make_scheduler(handlers={"slow": slow})
    job = await scheduler.schedule_in(0, "slow")
    await scheduler.tick()
    stopping = asyncio.ensure_future(scheduler.stop(timeout=30))
    await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    await stopping
    assert finished == [job.id]
    assert await scheduler.get(job.id) is None


async def test_stop_timeout_leaves_unfinished_jobs_runnable_after_restart(
    db: Database, make_scheduler: MakeScheduler, clock: FakeClock
) -> None:
    started: list[int] = []

    async def hangs(job: Job) -> None:
        started.append(job.attempts)
        if len(started) == 1:
            await asyncio.Event().wait()

    first = await make_scheduler(handlers={"hangs": hangs})
    job = await first.schedule_in(0, "hangs")
    await first.tick()
    await asyncio.sleep(0)
    await first.stop(timeout=0)
    stored = await first.get(job.id)
    assert stored is not None and (stored.state, stored.attempts) == (JobState.PENDING, 0)
    second = await make_scheduler(handlers={"hangs": hangs})
    await second.run_due()
    assert started == [1, 1], "released at once, not after the lease; the interrupted attempt did not count"
    assert await second.get(job.id) is None
