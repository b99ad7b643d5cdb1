"""Group commit for finished one-shot jobs: completions that arrive while one is being written go together.

Each caller still awaits its own result (so a slot frees only once its job is gone from the table), but
N handlers finishing at about the same time cost one `DELETE … WHERE id IN (…)` instead of N round
trips. Nothing waits on a timer: the first completion writes at once, the ones that arrive meanwhile
form the next batch.
"""

from __future__ import annotations

import asyncio

from .store import JobStore


class Completions:
    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._waiting: list[tuple[str, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def complete(self, job_id: str) -> bool:
        """Delete a claimed one-shot job; False if it was replaced or cancelled meanwhile."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((job_id, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="scheduler-completions")
        return await future

    async def _write(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    deleted = await self._store.complete_many([job_id for job_id, _ in batch])
                except Exception as exc:  # each caller decides what a failed write means for its job
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for job_id, future in batch:
                        if not future.done():
                            future.set_result(job_id in deleted)
        finally:
            self._writer = None
