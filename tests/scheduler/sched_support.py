"""Helpers shared by the scheduler tests (imported by conftest.py and the tests)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scheduler import FakeClock, Job, Scheduler


@dataclass
class Recorder:
    """A handler that records every run: (payload["n"] or the job id, attempts, clock time)."""

    clock: FakeClock
    runs: list[tuple[Any, int, datetime]] = field(default_factory=list)

    async def __call__(self, job: Job) -> None:
        self.runs.append((job.payload.get("n", job.id), job.attempts, self.clock.now()))

    @property
    def seen(self) -> list[Any]:
        return [run[0] for run in self.runs]


MakeScheduler = Callable[..., Awaitable[Scheduler]]
