"""The one door every proactive message goes through: enqueue durably, then hand to the worker."""

from __future__ import annotations

from collections.abc import Sequence

from state.outbox import Enqueued, OutboxItem, OutboxStore

from .delivery import DeliveryWorker


class ProactiveMessages:
    """Nothing sends directly: welcome, notifications, progress and results all come here."""

    def __init__(self, store: OutboxStore, worker: DeliveryWorker) -> None:
        self._store = store
        self._worker = worker

    async def enqueue(self, items: Sequence[OutboxItem]) -> list[Enqueued]:
        """Commit the rows, then wake the worker for those that may go now."""
        if not items:
            return []
        results = await self._store.enqueue(items)
        created = [r.id for r in results if r.created]
        if created:
            self._worker.submit([row for row in await self._store.get_many(created) if row.status == "pending"])
        return results
