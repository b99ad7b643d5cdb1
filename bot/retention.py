"""Retention: what the bot no longer needs is deleted, a small batch at a time, by an hourly scheduler job.

Finished outbox rows (sent, failed, cancelled, dropped, expired, superseded, merged), dead scheduler jobs,
broadcasts (notify batches) whose rows are gone, price observations (each product keeps its newest), finished
analyses and untouched quota lock rows older than RETENTION_DAYS. Batches of `batch` rows with a yield to the
event loop between them, so a large backlog never holds the database (or the turns waiting for it) for long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from scheduler.jobs import Job
from scheduler.scheduler import Scheduler
from state.analyses import AnalysisStore
from state.broadcasts import BroadcastStore
from state.clock import Clock
from state.outbox import OutboxStore
from state.prices import PriceLog
from state.processed import ProcessedActivities

log = logging.getLogger(__name__)

PURGE = "retention.purge"


class Retention:
    def __init__(self, outbox: OutboxStore, broadcasts: BroadcastStore, prices: PriceLog, scheduler: Scheduler,
                 clock: Clock, *, days: float = 30.0, batch: int = 500,
                 analyses: AnalysisStore | None = None, processed: ProcessedActivities | None = None) -> None:
        self._analyses = analyses
        self._outbox = outbox
        self._broadcasts = broadcasts
        self._processed = processed  # ids of processed activities: kept a day whatever RETENTION_DAYS says
        self._prices = prices
        self._scheduler = scheduler
        self._clock = clock
        self._keep = timedelta(days=days)
        self._batch = batch
        scheduler.register(PURGE, self._purge_job)

    async def start(self) -> None:
        """Run hourly (a restart keeps the cadence; missed runs coalesce into one)."""
        if await self._scheduler.get(key=PURGE) is None:
            await self._scheduler.schedule_every(3600, PURGE, key=PURGE, misfire="skip", jitter_s=60)

    async def _purge_job(self, job: Job) -> None:
        await self.purge()

    async def purge(self) -> dict[str, int]:
        """Delete everything older than the retention period; returns how many of each were deleted."""
        cutoff = self._clock.now() - self._keep
        before = cutoff.timestamp()
        deleted = {
            "outbox": await self._drain(lambda: self._outbox.purge(before, self._batch))
            + await self._drain(lambda: self._broadcasts.purge_rows(before, self._batch)),
            "batches": await self._drain(lambda: self._broadcasts.purge(before, self._batch)),
            "dead_jobs": await self._drain(lambda: self._scheduler.purge_dead(cutoff, self._batch)),
            "price_observations": await self._drain(lambda: self._prices.purge(before, self._batch)),
        }
        if self._analyses is not None:
            analyses = self._analyses
            deleted["analyses"] = await self._drain(lambda: analyses.purge(before, self._batch))
            deleted["quota_locks"] = await self._drain(lambda: analyses.purge_locks(before, self._batch))
        if self._processed is not None:
            processed = self._processed
            deleted["processed_activities"] = await self._drain(lambda: processed.purge(limit=self._batch))
        if any(deleted.values()):
            log.info("retention: deleted %s", ", ".join(f"{n} {what}" for what, n in deleted.items() if n))
        return deleted

    async def _drain(self, step: Callable[[], Awaitable[int]]) -> int:
        total = 0
        while n := await step():  # until nothing is left (a deletion can make more rows eligible)
            total += n
            await asyncio.sleep(0)  # let turns and sends in between batches
        return total
