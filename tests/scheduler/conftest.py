"""Fixtures for scheduler tests: a fake clock and schedulers that stop at teardown (on the `db` fixture of
tests/conftest.py, so every scheduler test runs on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sched_support import MakeScheduler, Recorder

from scheduler import FakeClock, Scheduler
from state.db import Database


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder(clock: FakeClock) -> Recorder:
    return Recorder(clock)


@pytest.fixture
async def make_scheduler(db: Database, clock: FakeClock, recorder: Recorder) -> AsyncIterator[MakeScheduler]:
    """Build and start schedulers on the shared database and fake clock, with `record` registered.

    `handlers={name: handler}` adds handlers; `record=False` leaves `record` out. All are stopped at teardown.
    """
    made: list[Scheduler] = []

    async def make(
        *, handlers: dict[str, Any] | None = None, record: bool = True, start: bool = True, **options: Any
    ) -> Scheduler:
        scheduler = Scheduler(db, clock, **{"retry_base_s": 10.0, **options})
        if record:
            scheduler.register("record", recorder)
        for name, handler in (handlers or {}).items():
            scheduler.register(name, handler)
        if start:
            await scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in reversed(made):
        await scheduler.stop(timeout=0)
