"""What happens to a claimed job around its run: attempt limit, misfire policy, retries, the next slot."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable
from datetime import datetime, timedelta

from state.availability import is_unavailable
from state.clock import Clock, backoff_s

from .completions import Completions
from .jobs import Job, Misfire, describe_error, next_slot, with_jitter
from .store import JobStore

log = logging.getLogger(__name__)

_UNAVAILABLE_RETRY_S = 2.0  # a job that failed because the database was away runs again this soon

Requeue = float | None
"""The due timestamp at which the scheduler should look at the job again, or None (done, dead, gone)."""


class Outcomes:
    """Decides and records each claimed job's fate. Every write is conditional on the job still being the
    one that was claimed, so a job replaced or cancelled meanwhile stays replaced or cancelled."""

    def __init__(
        self,
        store: JobStore,
        clock: Clock,
        *,
        max_attempts: int,
        retry_base_s: float,
        retry_max_s: float,
        rng: random.Random,
    ) -> None:
        self._store = store
        self._completions = Completions(store)
        self._clock = clock
        self._max_attempts = max_attempts
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._rng = rng

    async def admit(self, job: Job, now: datetime) -> tuple[bool, Requeue]:
        """Before running: (run it?, requeue). Applies the attempt limit and the misfire policy."""
        if job.attempts > self._max_attempts:
            log.error("job %s (%s) is dead: %d runs started, none finished", job.id, job.handler, job.attempts - 1)
            return False, await self._settle(
                self._store.bury(job.id, job.last_error or "lease expired: no run finished"), job
            )
        late_s = (now - job.due_at).total_seconds()
        if late_s > job.grace_s:
            if job.misfire is Misfire.SKIP:
                log.info("job %s (%s) skipped: %.1f s late, grace %.1f s", job.id, job.handler, late_s, job.grace_s)
                return False, await self._next(job, now, attempts=job.attempts - 1, last_error=job.last_error)
            log.warning("job %s (%s) runs %.1f s late (grace %.1f s)", job.id, job.handler, late_s, job.grace_s)
        return True, None

    async def succeeded(self, job: Job) -> Requeue:
        return await self._next(job, self._clock.now(), attempts=0, last_error=None)

    async def failed(self, job: Job, exc: Exception) -> Requeue:
        """Retry with exponential backoff, or keep the job as dead once it is out of attempts."""
        error = describe_error(exc)
        if is_unavailable(exc):  # not the job's fault: no attempt used, tried again soon (the outage is logged once)
            log.debug("job %s (%s) could not run: the database is unavailable", job.id, job.handler, exc_info=exc)
            due_at = self._clock.now() + timedelta(seconds=_UNAVAILABLE_RETRY_S)
            write = self._store.reschedule(job.id, due_at, slot_at=job.slot_at, attempts=max(0, job.attempts - 1),
                                           last_error=error)
            return await self._settle(write, job, due_at)
        if job.attempts >= self._max_attempts:
            log.error(
                "job %s (%s) failed on attempt %d of %d and is now dead: %s",
                job.id, job.handler, job.attempts, self._max_attempts, error, exc_info=exc,
            )  # fmt: skip
            return await self._settle(self._store.bury(job.id, error), job)
        delay = backoff_s(job.attempts, self._retry_base_s, self._retry_max_s)
        log.warning(
            "job %s (%s) failed on attempt %d of %d, retrying in %.0f s: %s",
            job.id, job.handler, job.attempts, self._max_attempts, delay, error, exc_info=exc,
        )  # fmt: skip
        due_at = self._clock.now() + timedelta(seconds=delay)
        write = self._store.reschedule(job.id, due_at, slot_at=job.slot_at, attempts=job.attempts, last_error=error)
        return await self._settle(write, job, due_at)

    async def _next(self, job: Job, now: datetime, *, attempts: int, last_error: str | None) -> Requeue:
        """After a run or a skip: a one-shot job is done, a repeating one moves to its next slot."""
        if job.interval_s is None:
            return await self._settle(self._completions.complete(job.id), job)
        slot = next_slot(job.slot_at or job.due_at, job.interval_s, now)
        due_at = with_jitter(slot, job.jitter_s, self._rng)
        write = self._store.reschedule(job.id, due_at, slot_at=slot, attempts=attempts, last_error=last_error)
        return await self._settle(write, job, due_at)

    async def _settle(self, write: Awaitable[bool], job: Job, due_at: datetime | None = None) -> Requeue:
        """Await a result write. If it failed, the job stays leased: look again when the lease expires."""
        try:
            changed = await write
        except Exception as exc:
            if is_unavailable(exc):
                log.debug("scheduler: could not record the result of job %s; it reruns after its lease", job.id,
                          exc_info=True)
            else:
                log.exception("scheduler: could not record the result of job %s; it reruns after its lease", job.id)
            return job.lease_until.timestamp() if job.lease_until is not None else None
        return due_at.timestamp() if changed and due_at is not None else None
