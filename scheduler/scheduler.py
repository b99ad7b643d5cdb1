"""The persistent scheduler's public face: registering handlers, scheduling, querying, lifecycle.

The database is the truth; the heap of (due timestamp, job id) in `Dispatcher` is a cache rebuilt by
`start()`. A heap entry is only a hint: a job runs after a conditional claim in the database succeeds,
so entries for jobs cancelled or replaced in the meantime cost one empty claim and nothing else.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from state.clock import Clock

from .dispatch import Dispatcher
from .jobs import (
    Handler,
    Job,
    JobSpec,
    Misfire,
    UnknownHandlerError,
    check_seconds,
    new_job_id,
    to_utc,
    with_jitter,
)
from .outcomes import Outcomes
from .store import JobStore, insert_row

if TYPE_CHECKING:
    from state.db import Connection, Database

log = logging.getLogger(__name__)


class Staging:
    """Jobs scheduled on a connection the caller owns (see `Scheduler.staging`)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self.jobs: list[Job] = []

    async def schedule_in(self, conn: Connection, seconds: float, handler: str,
                          payload: Mapping[str, Any] | None = None, *, key: str | None = None) -> Job:
        when = self._scheduler._clock.now() + timedelta(seconds=check_seconds(seconds, "seconds"))
        job = self._scheduler._new_job(handler, payload, when, key=key, misfire=Misfire.RUN_LATE, grace_s=None)
        await self._scheduler._store.insert(job, conn)
        self.jobs.append(job)
        return job


class Scheduler:
    """Persistent asyncio job scheduler with leases, retries, misfire handling and bounded concurrency.

    Register handlers, `await start()`, schedule jobs (also from inside handlers), `await stop()`.
    Delivery is at least once: a handler may run again after a crash, so handlers should be idempotent.
    Several schedulers (replicas, each with its own `owner`) may share one database: a job runs on one at a
    time (the claim), a running handler's lease is renewed every `sync_s` or a third of the lease (the
    heartbeat), and each picks up the jobs the others scheduled or left behind when they died (`sync`).
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        max_concurrency: int = 8,
        lease_seconds: float = 300.0,
        max_attempts: int = 5,
        retry_base_s: float = 10.0,
        retry_max_s: float = 3600.0,
        misfire_grace_s: float = 60.0,
        rng: random.Random | None = None,
        on_job_start: Callable[[str, float], None] | None = None,
        owner: str = "",
        sync_s: float = 5.0,
    ) -> None:
        """`on_job_start(handler, lag_seconds)` is called as each job starts (lag: due time to start).
        `owner` names this process among the replicas sharing the database."""
        if max_concurrency < 1 or max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be at least 1")
        self._store = JobStore(db, owner)
        self._clock = clock
        lease = timedelta(seconds=check_seconds(lease_seconds, "lease_seconds", positive=True))
        self._grace_s = check_seconds(misfire_grace_s, "misfire_grace_s")
        self._rng = rng or random.Random()
        outcomes = Outcomes(
            self._store,
            clock,
            max_attempts=max_attempts,
            retry_base_s=check_seconds(retry_base_s, "retry_base_s"),
            retry_max_s=check_seconds(retry_max_s, "retry_max_s"),
            rng=self._rng,
        )
        self._handlers: dict[str, Handler] = {}
        self._dispatcher = Dispatcher(
            self._store, clock, outcomes, self._handlers, max_concurrency=max_concurrency, lease=lease,
            on_job_start=on_job_start, sync_s=check_seconds(sync_s, "sync_s", positive=True),
        )

    # -- handlers -----------------------------------------------------------------------------------

    def register(self, name: str, handler: Handler) -> None:
        """Bind a name (what jobs store) to `async def handler(job: Job) -> None`; call before `start()`."""
        if self._dispatcher.active:
            raise RuntimeError(f"register handler {name!r} before start(): jobs are loaded by start()")
        if not name:
            raise ValueError("handler name must be a non-empty string")
        if name in self._handlers and self._handlers[name] is not handler:
            raise ValueError(f"handler {name!r} is already registered")
        self._handlers[name] = handler

    def _check_handler(self, name: str) -> None:
        if name not in self._handlers:
            raise UnknownHandlerError(f"no handler registered as {name!r}; register it before scheduling")

    # -- scheduling ---------------------------------------------------------------------------------

    async def schedule_at(
        self,
        when: datetime,
        handler: str,
        payload: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        misfire: Misfire | str = Misfire.RUN_LATE,
        grace_s: float | None = None,
    ) -> Job:
        """Run `handler` once at `when` (timezone-aware). A job holding the same `key` is replaced."""
        job = self._new_job(handler, payload, to_utc(when), key=key, misfire=misfire, grace_s=grace_s)
        await self._store.insert(job)
        self._dispatcher.push(job.id, job.due_at.timestamp())
        return job

    async def schedule_in(
        self,
        seconds: float,
        handler: str,
        payload: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        misfire: Misfire | str = Misfire.RUN_LATE,
        grace_s: float | None = None,
    ) -> Job:
        """Run `handler` once, `seconds` from now."""
        when = self._clock.now() + timedelta(seconds=check_seconds(seconds, "seconds"))
        return await self.schedule_at(when, handler, payload, key=key, misfire=misfire, grace_s=grace_s)

    async def schedule_every(
        self,
        interval_s: float,
        handler: str,
        payload: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        jitter_s: float = 0.0,
        first_in: float | None = None,
        misfire: Misfire | str = Misfire.RUN_LATE,
        grace_s: float | None = None,
    ) -> Job:
        """Run `handler` every `interval_s` seconds, first after `first_in` (default: one interval).

        Each run is delayed by a random 0..`jitter_s` seconds without shifting the cadence; missed
        slots (downtime, slow runs) coalesce into a single run.
        """
        interval_s = check_seconds(interval_s, "interval_s", positive=True)
        jitter_s = check_seconds(jitter_s, "jitter_s")
        first = interval_s if first_in is None else check_seconds(first_in, "first_in")
        slot = self._clock.now() + timedelta(seconds=first)
        job = self._new_job(
            handler,
            payload,
            with_jitter(slot, jitter_s, self._rng),
            key=key,
            misfire=misfire,
            grace_s=grace_s,
            interval_s=interval_s,
            jitter_s=jitter_s,
            slot_at=slot,
        )
        await self._store.insert(job)
        self._dispatcher.push(job.id, job.due_at.timestamp())
        return job

    @asynccontextmanager
    async def staging(self) -> AsyncIterator[Staging]:
        """Schedule jobs inside the caller's own transaction: `await stage.schedule_in(tx, …)` writes on `tx`;
        the jobs join the timer when the block exits without an error (after the caller committed). So a row and
        the jobs that work on it are written together, or not at all."""
        stage = Staging(self)
        yield stage
        for job in stage.jobs:
            self._dispatcher.push(job.id, job.due_at.timestamp(), arm=False)
        self._dispatcher.arm()

    async def schedule_many(self, specs: Iterable[JobSpec]) -> list[str]:
        """Create many one-shot jobs in one transaction; returns their ids in order."""
        jobs = [
            self._new_job(
                s.handler, s.payload, to_utc(s.due_at, "due_at"), key=s.key, misfire=s.misfire, grace_s=s.grace_s
            )
            for s in specs
        ]
        await self._store.insert_many([insert_row(job) for job in jobs])
        for job in jobs:
            self._dispatcher.push(job.id, job.due_at.timestamp(), arm=False)
        self._dispatcher.arm()
        return [job.id for job in jobs]

    def _new_job(
        self,
        handler: str,
        payload: Mapping[str, Any] | None,
        due_at: datetime,
        *,
        key: str | None,
        misfire: Misfire | str,
        grace_s: float | None,
        interval_s: float | None = None,
        jitter_s: float = 0.0,
        slot_at: datetime | None = None,
    ) -> Job:
        self._check_handler(handler)
        now = self._clock.now()
        return Job(
            id=new_job_id(now),
            handler=handler,
            payload=dict(payload or {}),
            due_at=due_at,
            key=key,
            misfire=Misfire(misfire),
            grace_s=self._grace_s if grace_s is None else check_seconds(grace_s, "grace_s"),
            interval_s=interval_s,
            jitter_s=jitter_s,
            slot_at=slot_at,
            created_at=now,
        )

    async def cancel(self, id: str | None = None, *, key: str | None = None) -> bool:
        """Delete a job by id or key; True if there was one. A handler already running is not interrupted."""
        if (id is None) == (key is None):
            raise ValueError("cancel() takes exactly one of id= or key=")
        if id is not None:
            self._dispatcher.discard(id)  # its heap entry is now stale and will be skipped
        return await self._store.delete(job_id=id, key=key)

    async def get(self, id: str | None = None, *, key: str | None = None) -> Job | None:
        """The job with this id or key, in any state, or None."""
        if (id is None) == (key is None):
            raise ValueError("get() takes exactly one of id= or key=")
        return await self._store.get(job_id=id, key=key)

    async def list_jobs(self, prefix: str | None = None) -> list[Job]:
        """Jobs in any state ordered by due time: all of them, or those whose key starts with `prefix`."""
        return await self._store.list_by_prefix(prefix)

    async def purge_dead(self, before: datetime, limit: int = 500) -> int:
        """Delete up to `limit` dead jobs that were due before `before`; returns how many (retention)."""
        return await self._store.purge_dead(before, limit)

    async def dead_jobs(self) -> list[Job]:
        """Jobs that ran out of attempts, with their last error. They stay until cancelled or replaced."""
        return await self._store.dead()

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Reclaim expired leases, load runnable jobs into the heap, arm the timer, start dispatching."""
        if self._dispatcher.active:
            raise RuntimeError("scheduler already started")
        reclaimed = await self._store.reclaim_expired(self._clock.now())
        unknown: Counter[str] = Counter()
        entries: list[tuple[float, str]] = []
        async for rows in self._store.runnable():
            for row in rows:
                if row["handler"] not in self._handlers:
                    unknown[row["handler"]] += 1
                    continue
                # A run still leased (another process, or a crash moments ago) is claimable at expiry.
                when = row["lease_until"] if row["state"] == "running" else row["due_at"]
                entries.append((float(when), row["id"]))
        for name, count in sorted(unknown.items()):
            log.warning(
                "scheduler: %d job(s) name handler %r, which this version does not register;"
                " they are kept in the database for a version that does",
                count,
                name,
            )
        if reclaimed:
            log.warning("scheduler: %d job(s) were running when the process died; they run again", reclaimed)
        self._dispatcher.start(entries)
        log.info("scheduler started: %d job(s) pending", len(self._dispatcher))

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; wait up to `timeout` for running handlers, then cancel the rest.

        Cancelled runs go back to pending (the attempt does not count), so they run after a restart.
        """
        if self._dispatcher.active:
            await self._dispatcher.stop(timeout)
            log.info("scheduler stopped")

    def database_back(self) -> None:
        """The database answers again (state.availability): pick up and run what is due now."""
        self._dispatcher.wake()

    @property
    def running(self) -> list[Job]:
        """Jobs whose handlers are running in this process right now."""
        return self._dispatcher.running

    async def tick(self) -> int:
        """Start the handlers of jobs due by the clock now (up to the concurrency bound); don't wait.

        Returns how many handlers this call started. The timer does this by itself in real time;
        tests that drive a FakeClock call this, or `run_due()`.
        """
        self._require_started()
        return await self._dispatcher.dispatch()

    async def sync(self) -> None:
        """The heartbeat and pick-up (see the class docstring); the real timer runs it every period."""
        self._require_started()
        await self._dispatcher.sync()

    async def run_due(self) -> int:
        """Run everything due by the clock now and wait until no handler is running.

        Jobs that handlers schedule due by then run too. Returns how many runs this call started
        (the real timer may have started some of them first).
        """
        self._require_started()
        return await self._dispatcher.run_due()

    def _require_started(self) -> None:
        if not self._dispatcher.active:
            raise RuntimeError("scheduler is not running; call start() first")
