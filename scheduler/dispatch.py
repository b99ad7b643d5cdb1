"""The engine under the scheduler: the due-time heap, the one wake-up timer, claiming and running handlers.

One `loop.call_at` handle is armed for the earliest due time (as in aiolimiter's leaky bucket); when it
fires, the dispatcher task claims what is due (up to the concurrency bound) and starts the handlers.
Nothing polls: with no jobs the process does not wake up at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from state.availability import is_unavailable
from state.clock import Clock

from .heap import DueHeap
from .jobs import CURRENT_JOB_ID, Handler, Job
from .outcomes import Outcomes
from .store import JobStore

log = logging.getLogger(__name__)

_CLAIM_BATCH = 200  # jobs claimed per database round trip
_MAX_SLEEP_S = 60.0  # re-check at least this often while jobs are pending, in case the wall clock jumped
_DB_RETRY_S = 1.0  # after a failed claim, wait this long before trying again


class Dispatcher:
    """Runs jobs when they are due. Every task it starts is tracked and awaited or cancelled by `stop()`."""

    def __init__(
        self,
        store: JobStore,
        clock: Clock,
        outcomes: Outcomes,
        handlers: Mapping[str, Handler],
        *,
        max_concurrency: int,
        lease: timedelta,
        on_job_start: Callable[[str, float], None] | None = None,
        sync_s: float = 5.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._outcomes = outcomes
        self._handlers = handlers
        self._max_concurrency = max_concurrency
        self._lease = lease
        self._on_job_start = on_job_start
        self._heap = DueHeap()
        self._running: dict[asyncio.Task[None], Job] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._not_before = 0.0  # loop time before which the timer must not fire (after a database error)
        self._wakeup = asyncio.Event()
        self._dispatch_lock = asyncio.Lock()
        self._dispatcher: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        # Several replicas share the jobs: every `_period` this one renews the leases of its runs and picks up
        # jobs it did not schedule itself (another replica's, or a dead replica's expired runs).
        self._sync_s = sync_s
        self._period = min(sync_s, lease.total_seconds() / 3)
        self._periodic: asyncio.TimerHandle | None = None
        self._maintenance_due = False

    @property
    def active(self) -> bool:
        return self._started and not self._stopping

    @property
    def running(self) -> list[Job]:
        return list(self._running.values())

    def __len__(self) -> int:
        return len(self._heap)

    def start(self, entries: list[tuple[float, str]]) -> None:
        """Load (due timestamp, job id) pairs, start the dispatcher task and arm the timer."""
        self._loop = asyncio.get_running_loop()
        self._heap.load(entries)
        self._started, self._stopping = True, False
        self._wakeup.clear()
        self._dispatcher = self._loop.create_task(self._dispatch_loop(), name="scheduler-dispatch")
        self._arm()
        self._periodic = self._loop.call_at(self._loop.time() + self._period, self._on_period)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; wait up to `timeout` for running handlers, then cancel the rest.

        Cancelled runs go back to pending (the attempt does not count), so they run after a restart.
        """
        if not self._started:
            return
        self._stopping = True
        self._cancel_timer()
        if self._periodic is not None:
            self._periodic.cancel()
            self._periodic = None
        self._wakeup.set()
        if self._dispatcher is not None:
            await self._dispatcher
            self._dispatcher = None
        if self._running:
            _, unfinished = await asyncio.wait(set(self._running), timeout=timeout)
            if unfinished:
                jobs = [self._running[task] for task in unfinished]
                log.warning(
                    "scheduler: %d handler(s) still running after %.1f s are cancelled and will run after restart: %s",
                    len(jobs),
                    timeout,
                    ", ".join(f"{job.id} ({job.handler})" for job in jobs),
                )
                for task in unfinished:
                    task.cancel()
                _, stuck = await asyncio.wait(unfinished, timeout=max(1.0, timeout))
                if stuck:
                    log.error("scheduler: %d handler(s) ignored cancellation", len(stuck))
                try:
                    await self._store.release([job.id for job in jobs])
                except Exception:
                    log.exception("scheduler: could not release interrupted jobs; they rerun when leases expire")
        self._heap.clear()
        self._started = False

    async def run_due(self) -> int:
        await self.sync()
        total = 0
        while True:
            total += await self.dispatch()
            if not self._running:
                return total
            await asyncio.wait(set(self._running))

    def push(self, job_id: str, ts: float, *, arm: bool = True) -> None:
        """Tell the heap a job is due at `ts` (ignored while stopped: `start()` loads from the database)."""
        if not self.active:
            return
        if self._heap.push(job_id, ts) and arm:
            self._arm()

    def discard(self, job_id: str) -> None:
        self._heap.discard(job_id)

    # -- the heap and the timer ---------------------------------------------------------------------

    def arm(self) -> None:
        self._arm()

    def _arm(self) -> None:
        """Point the single wake-up handle at the earliest due job (or at nothing)."""
        if not self._started or self._stopping or self._loop is None:
            return
        earliest = self._heap.earliest()
        if earliest is None or len(self._running) >= self._max_concurrency:
            self._cancel_timer()  # a finishing handler re-arms
            return
        delay = min(max(earliest - self._clock.now().timestamp(), 0.0), _MAX_SLEEP_S)
        when = max(self._loop.time() + delay, self._not_before)
        if self._timer is not None:
            if self._timer.when() <= when:
                return  # it fires first; the dispatch it triggers re-arms
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._wakeup.set()

    # -- dispatching and running --------------------------------------------------------------------

    def wake(self) -> None:
        """The database answers again: sync and claim now rather than after the retry delay or the period."""
        if not self.active:
            return
        self._not_before = 0.0
        self._maintenance_due = True
        self._wakeup.set()

    def _on_period(self) -> None:
        self._maintenance_due = True
        self._wakeup.set()
        if self._loop is not None and not self._stopping:
            self._periodic = self._loop.call_at(self._loop.time() + self._period, self._on_period)

    async def sync(self) -> None:
        """Renew the leases of this process's runs (the heartbeat), and put into the heap every job claimable
        within the next sync period that it does not know of."""
        now = self._clock.now()
        if self._running:
            held = await self._store.renew([job.id for job in self._running.values()], now + self._lease)
            lost = [job.id for job in self._running.values() if job.id not in held]
            if lost:
                log.warning("scheduler: %d run(s) were taken over by another replica: %s", len(lost), ", ".join(lost))
        for ts, job_id in await self._store.due_by(now + timedelta(seconds=self._sync_s)):
            self.push(job_id, ts, arm=False)
        self._arm()

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._stopping:
                return
            try:
                if self._maintenance_due:
                    self._maintenance_due = False
                    await self.sync()
                await self.dispatch()
            except Exception as exc:  # keep dispatching; the failure is logged and the timer re-armed
                if is_unavailable(exc):  # the outage is logged once (state.availability); the details at DEBUG
                    log.debug("scheduler: the database is unavailable", exc_info=True)
                    self._maintenance_due = True  # sync again on the next wake-up
                    assert self._loop is not None
                    self._not_before = self._loop.time() + _DB_RETRY_S
                else:
                    log.exception("scheduler: dispatch failed")
                self._arm()

    async def dispatch(self) -> int:
        """Claim due jobs and start their handlers while there is room; then re-arm the timer."""
        started = 0
        async with self._dispatch_lock:
            while not self._stopping:
                free = self._max_concurrency - len(self._running)
                now = self._clock.now()
                due = self._heap.pop_due(now.timestamp(), min(free, _CLAIM_BATCH)) if free > 0 else []
                if not due:
                    break
                ids = [job_id for _, job_id in due]
                try:
                    claimed = {job.id: job for job in await self._store.claim(ids, now, now + self._lease)}
                except Exception as exc:
                    if is_unavailable(exc):
                        log.debug("scheduler: could not claim %d due job(s); retrying in %.0f s", len(ids),
                                  _DB_RETRY_S, exc_info=True)
                    else:
                        log.exception("scheduler: could not claim %d due job(s); retrying in %.0f s", len(ids),
                                      _DB_RETRY_S)
                    for ts, job_id in due:
                        self.push(job_id, ts, arm=False)
                    assert self._loop is not None
                    self._not_before = self._loop.time() + _DB_RETRY_S
                    break
                for job_id in ids:  # heap order, so with room to spare the earliest starts first
                    job = claimed.get(job_id)  # missing: cancelled or replaced since it was pushed
                    if job is not None and await self._begin(job, now):
                        started += 1
            self._arm()
        return started

    async def _begin(self, job: Job, now: datetime) -> bool:
        run, requeue = await self._outcomes.admit(job, now)
        if requeue is not None:
            self.push(job.id, requeue)
        if not run:
            return False
        if self._on_job_start is not None:
            try:
                self._on_job_start(job.handler, (now - job.due_at).total_seconds())
            except Exception:  # an observer must never stop a job
                log.exception("scheduler: on_job_start hook failed")
        assert self._loop is not None
        task = self._loop.create_task(self._run(job), name=f"job {job.handler} {job.id}")
        self._running[task] = job
        task.add_done_callback(self._on_done)
        return True

    async def _run(self, job: Job) -> None:
        CURRENT_JOB_ID.set(job.id)  # this task's own context: logs of the handler can name the job
        try:
            await self._handlers[job.handler](job)
        except Exception as exc:
            requeue = await self._outcomes.failed(job, exc)
        else:
            requeue = await self._outcomes.succeeded(job)
        if requeue is not None:
            self.push(job.id, requeue)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("scheduler: job task %s crashed", task.get_name(), exc_info=task.exception())
        self._arm()  # a slot is free
