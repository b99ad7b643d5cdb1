"""Scheduling API against a fake clock: ordering, replace-by-key, cancel, get/list, validation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sched_support import MakeScheduler, Recorder

from scheduler import FakeClock, Job, JobSpec, JobState, Scheduler, UnknownHandlerError, jobs
from state.clock import backoff_s
from state.db import Database


async def test_jobs_run_in_due_order_and_not_before(
    make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    scheduler = await make_scheduler(max_concurrency=1)
    for n, delay in [(3, 30), (1, 10), (2, 20), (4, 40)]:
        await scheduler.schedule_in(delay, "record", {"n": n})
    clock.advance(9.999)
    assert await scheduler.run_due() == 0
    clock.advance(25)
    await scheduler.run_due()  # (its count may miss a run the real timer started first, once they were due)
    assert recorder.seen == [1, 2, 3]
    clock.advance(100)
    await scheduler.run_due()
    assert recorder.seen == [1, 2, 3, 4]
    assert await scheduler.list_jobs() == [], "one-shot jobs leave the table when done"


async def test_with_room_to_spare_handlers_start_in_due_order(
    make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    scheduler = await make_scheduler(max_concurrency=50)
    start = clock.now()
    ids = await scheduler.schedule_many(
        JobSpec("record", start + timedelta(seconds=100 - n), {"n": 100 - n}) for n in range(100)
    )
    assert len(set(ids)) == 100
    clock.advance(100)
    await scheduler.run_due()
    assert recorder.seen == list(range(1, 101))


async def test_scheduling_with_an_existing_key_replaces_the_job(
    make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    scheduler = await make_scheduler()
    first = await scheduler.schedule_in(10, "record", {"n": "old"}, key="poll:msft")
    second = await scheduler.schedule_in(20, "record", {"n": "new"}, key="poll:msft")
    assert second.id != first.id
    assert await scheduler.get(first.id) is None
    stored = await scheduler.get(key="poll:msft")
    assert stored is not None and stored.id == second.id and stored.payload == {"n": "new"}
    clock.advance(15)
    assert await scheduler.run_due() == 0, "the replaced job must not fire at its old time"
    clock.advance(5)
    await scheduler.run_due()
    assert recorder.seen == ["new"]


async def test_cancel_by_id_and_by_key(make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder) -> None:
    scheduler = await make_scheduler()
    by_id = await scheduler.schedule_in(5, "record", {"n": 1})
    await scheduler.schedule_in(5, "record", {"n": 2}, key="hold:u1")
    await scheduler.schedule_in(5, "record", {"n": 3})
    assert await scheduler.cancel(by_id.id) is True
    assert await scheduler.cancel(key="hold:u1") is True
    assert await scheduler.cancel(key="hold:u1") is False
    assert await scheduler.cancel("no-such-id") is False
    with pytest.raises(ValueError, match="exactly one"):
        await scheduler.cancel()
    clock.advance(5)
    await scheduler.run_due()
    assert recorder.seen == [3]


async def test_get_and_list_by_key_prefix(make_scheduler: MakeScheduler, clock: FakeClock) -> None:
    scheduler = await make_scheduler()
    await scheduler.schedule_in(30, "record", key="poll:b")
    await scheduler.schedule_in(10, "record", key="poll:a")
    await scheduler.schedule_in(20, "record", key="pollster")
    await scheduler.schedule_in(5, "record", key="hold:x")
    unkeyed = await scheduler.schedule_in(1, "record", {"n": 1})
    assert [job.key for job in await scheduler.list_jobs("poll:")] == ["poll:a", "poll:b"]
    assert [job.key for job in await scheduler.list_jobs("poll")] == ["poll:a", "pollster", "poll:b"]
    everything = [None, "hold:x", "poll:a", "pollster", "poll:b"]
    assert [job.key for job in await scheduler.list_jobs()] == everything
    job = await scheduler.get(unkeyed.id)
    assert job is not None
    assert (job.handler, job.payload, job.state, job.attempts) == ("record", {"n": 1}, JobState.PENDING, 0)
    assert job.due_at == clock.now() + timedelta(seconds=1) and job.due_at.tzinfo is not None


async def test_schedule_at_stores_utc_and_refuses_naive_times(make_scheduler: MakeScheduler, clock: FakeClock) -> None:
    scheduler = await make_scheduler()
    paris = timezone(timedelta(hours=1))
    when = (clock.now() + timedelta(hours=2)).astimezone(paris)
    job = await scheduler.schedule_at(when, "record")
    stored = await scheduler.get(job.id)
    assert stored is not None and stored.due_at == when and stored.due_at.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="timezone-aware"):
        await scheduler.schedule_at(datetime(2026, 1, 1), "record")


async def test_bad_input_is_refused_with_a_clear_error(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler()
    with pytest.raises(UnknownHandlerError, match="'nope'"):
        await scheduler.schedule_in(1, "nope")
    with pytest.raises(TypeError, match="JSON serializable"):
        await scheduler.schedule_in(1, "record", {"when": object()})
    with pytest.raises(ValueError, match="seconds"):
        await scheduler.schedule_in(-1, "record")
    with pytest.raises(ValueError, match="interval_s"):
        await scheduler.schedule_every(0, "record")
    assert await scheduler.list_jobs() == [], "nothing half-written"


async def test_a_handler_can_reschedule_its_own_key_and_schedule_others(
    make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    runs: list[str] = []
    scheduler: Scheduler

    async def still_working(job: Job) -> None:
        runs.append(job.id)
        if len(runs) < 3:
            await scheduler.schedule_in(10, "still_working", job.payload, key=job.key)
        await scheduler.schedule_in(0, "record", {"n": len(runs)})
        await scheduler.cancel(key="never")

    scheduler = await make_scheduler(handlers={"still_working": still_working})
    await scheduler.schedule_in(100, "record", {"n": "x"}, key="never")
    await scheduler.schedule_in(10, "still_working", {"task": 7}, key="task:7")
    for _ in range(4):
        clock.advance(10)
        await scheduler.run_due()
    assert len(runs) == 3 and len(set(runs)) == 3, "each reschedule is a new job replacing the running one"
    assert recorder.seen == [1, 2, 3], "jobs a handler schedules for now run in the same run_due()"
    assert await scheduler.get(key="task:7") is None


async def test_repeating_job_keeps_its_cadence_with_bounded_jitter(
    make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    import random

    scheduler = await make_scheduler(rng=random.Random(7))
    start = clock.now()
    job = await scheduler.schedule_every(60, "record", {"n": "tick"}, jitter_s=5, first_in=0)
    assert start <= job.due_at <= start + timedelta(seconds=5)
    times = []
    for _ in range(5):
        stored = await scheduler.get(job.id)
        assert stored is not None
        clock.advance((stored.due_at - clock.now()).total_seconds())
        await scheduler.run_due()
        times.append((clock.now() - start).total_seconds())
    slots = [round(t // 60) for t in times]
    assert slots == [0, 1, 2, 3, 4], f"one run per slot, jitter never shifts the cadence: {times}"
    assert all(t - 60 * s <= 5 for t, s in zip(times, slots, strict=True))
    assert len(recorder.runs) == 5


async def test_jobs_scheduled_before_start_are_persisted_and_loaded(
    db: Database, make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    scheduler = await make_scheduler(start=False)
    await scheduler.schedule_in(1, "record", {"n": 1})
    await scheduler.start()
    clock.advance(1)
    await scheduler.run_due()
    assert recorder.seen == [1]


async def test_the_real_timer_runs_due_jobs_without_being_asked(db: Database) -> None:
    """SystemClock + the loop's call_at; no run_due(). The job is due at once, so nothing waits on time."""
    from scheduler import SystemClock

    ran = asyncio.Event()

    async def handler(job: Job) -> None:
        ran.set()

    scheduler = Scheduler(db, SystemClock())
    scheduler.register("h", handler)
    await scheduler.start()
    try:
        assert scheduler._dispatcher._timer is None, "no jobs: nothing armed, nothing polling"
        await scheduler.schedule_in(3600, "h")
        assert scheduler._dispatcher._timer is not None, "one wake-up handle for the earliest job"
        await scheduler.schedule_in(0, "h")
        await asyncio.wait_for(ran.wait(), timeout=10)
    finally:
        await scheduler.stop()


def test_next_slot_coalesces_missed_slots() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert jobs.next_slot(start, 10, start) == start + timedelta(seconds=10)
    assert jobs.next_slot(start, 10, start + timedelta(seconds=95)) == start + timedelta(seconds=100)
    assert jobs.next_slot(start, 10, start + timedelta(seconds=100)) == start + timedelta(seconds=110)
    assert [backoff_s(n, 10, 60) for n in range(1, 6)] == [10, 20, 40, 60, 60]


async def test_handlers_are_registered_once_and_before_start(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler(start=False)

    async def other(job: Job) -> None:
        return None

    with pytest.raises(ValueError, match="already registered"):
        scheduler.register("record", other)
    await scheduler.start()
    with pytest.raises(RuntimeError, match="before start"):
        scheduler.register("late", other)


async def test_a_dead_job_is_replaced_by_scheduling_its_key_again(
    make_scheduler: MakeScheduler, clock: FakeClock, recorder: Recorder
) -> None:
    async def broken(job: Job) -> None:
        raise ValueError("bad payload")

    scheduler = await make_scheduler(handlers={"broken": broken}, max_attempts=1)
    await scheduler.schedule_in(0, "broken", key="release:u1")
    await scheduler.run_due()
    assert [job.key for job in await scheduler.dead_jobs()] == ["release:u1"]
    await scheduler.schedule_in(1, "record", {"n": "fixed"}, key="release:u1")
    assert await scheduler.dead_jobs() == []
    clock.advance(1)
    await scheduler.run_due()
    assert recorder.seen == ["fixed"]
