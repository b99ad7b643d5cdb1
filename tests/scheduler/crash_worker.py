"""A scheduler process for the SIGKILL test: `python crash_worker.py DB_PATH first|second`.

first:  schedule a job due now; its handler reports RUNNING and then hangs until the test kills us.
second: start on the same database; when the crashed run's lease expires, the job runs again: DONE.
"""

from __future__ import annotations

import asyncio
import sys

from scheduler import Job, Scheduler, SystemClock
from state.sqlite import SqliteDatabase


async def main(path: str, phase: str) -> None:
    db = SqliteDatabase(path)
    await db.open()
    finished = asyncio.Event()

    async def work(job: Job) -> None:
        print(f"RUNNING {job.id} {job.attempts}", flush=True)
        if phase == "first":
            await asyncio.Event().wait()  # the test sends SIGKILL while we are here
        print(f"DONE {job.id} {job.attempts}", flush=True)
        finished.set()

    scheduler = Scheduler(db, SystemClock(), lease_seconds=1.0)
    scheduler.register("work", work)
    await scheduler.start()
    if phase == "first":
        await scheduler.schedule_in(0, "work", {"report": "weekly"}, key="crash-test")
    await finished.wait()
    await scheduler.stop()
    await db.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
