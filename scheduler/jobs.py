"""Jobs as data: what a scheduled job is, and the pure rules for when it runs next."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

CURRENT_JOB_ID: ContextVar[str | None] = ContextVar("scheduler_job_id", default=None)
"""The id of the job whose handler runs in the current task (None outside handlers); logs read it."""


class Misfire(StrEnum):
    """What to do with a run that starts more than its grace window after its due time."""

    RUN_LATE = "run_late"
    """Run it anyway, once (missed runs of a repeating job coalesce into this one run)."""
    SKIP = "skip"
    """Skip this run; a one-shot job is removed, a repeating job waits for its next slot."""


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DEAD = "dead"


class UnknownHandlerError(LookupError):
    """A job names a handler that is not registered with the scheduler."""


@dataclass(frozen=True, slots=True)
class Job:
    """One scheduled job as stored. `due_at` is UTC; `interval_s` is set for repeating jobs."""

    id: str
    handler: str
    payload: dict[str, Any]
    due_at: datetime
    key: str | None = None
    interval_s: float | None = None
    jitter_s: float = 0.0
    slot_at: datetime | None = None
    """For repeating jobs: the nominal slot `due_at` belongs to (without jitter); later slots follow it."""
    misfire: Misfire = Misfire.RUN_LATE
    grace_s: float = 60.0
    state: JobState = JobState.PENDING
    attempts: int = 0
    """Runs started since the last success (a run interrupted by a crash counts)."""
    lease_until: datetime | None = None
    last_error: str | None = None
    created_at: datetime | None = None

    @property
    def repeating(self) -> bool:
        return self.interval_s is not None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job to create with `Scheduler.schedule_many`."""

    handler: str
    due_at: datetime
    payload: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None
    misfire: Misfire = Misfire.RUN_LATE
    grace_s: float | None = None


Handler = Callable[[Job], Awaitable[None]]
"""`async def handler(job: Job) -> None`; raising an exception means "failed, retry later"."""


def new_job_id(now: datetime) -> str:
    """A unique, roughly time-ordered id (48-bit milliseconds + 64 random bits), so inserts append."""
    return f"{int(now.timestamp() * 1000):012x}{os.urandom(8).hex()}"


def to_utc(when: datetime, name: str = "when") -> datetime:
    """Refuse naive datetimes (their zone is a guess) and normalise aware ones to UTC."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (got naive {when.isoformat()})")
    return when.astimezone(UTC)


def check_seconds(value: float, name: str, *, positive: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'} (got {value!r})")
    return value


def next_slot(slot_at: datetime, interval_s: float, now: datetime) -> datetime:
    """The first slot of the series `slot_at + k * interval` strictly after `now` (k >= 1).

    Jumping straight past `now` is what coalesces missed runs: however long the process was down,
    the job runs at most once for the backlog and then keeps its original cadence.
    """
    step = timedelta(seconds=interval_s)
    nxt = slot_at + step
    if nxt <= now:
        missed = math.floor((now - slot_at).total_seconds() / interval_s)
        nxt = slot_at + step * missed
        while nxt <= now:  # float rounding can leave us one slot short
            nxt += step
    return nxt


def with_jitter(slot_at: datetime, jitter_s: float, rng: random.Random) -> datetime:
    return slot_at + timedelta(seconds=rng.uniform(0.0, jitter_s)) if jitter_s > 0 else slot_at


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:2000] + "…"
