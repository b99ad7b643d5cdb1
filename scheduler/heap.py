"""The in-memory cache of when jobs are due: a heap of (timestamp, job id) with lazy deletion."""

from __future__ import annotations

import heapq


class DueHeap:
    """Each job id has at most one valid entry (the one `_due` agrees with); the others are stale and
    dropped when they reach the top. A valid entry is still only a hint: the database claim decides."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def push(self, job_id: str, ts: float) -> bool:
        """Add or move a job; True if it is now the earliest."""
        self._due[job_id] = ts
        heapq.heappush(self._heap, (ts, job_id))
        return self._heap[0][1] == job_id

    def load(self, entries: list[tuple[float, str]]) -> None:
        """Replace the contents with (timestamp, job id) pairs in any order (start-up)."""
        heapq.heapify(entries)
        self._heap = entries
        self._due = {job_id: ts for ts, job_id in entries}

    def discard(self, job_id: str) -> None:
        self._due.pop(job_id, None)

    def earliest(self) -> float | None:
        heap, due = self._heap, self._due
        while heap and due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now_ts: float, limit: int) -> list[tuple[float, str]]:
        """Remove and return up to `limit` valid entries due by `now_ts`, earliest first."""
        heap, due = self._heap, self._due
        popped: list[tuple[float, str]] = []
        while heap and heap[0][0] <= now_ts and len(popped) < limit:
            ts, job_id = heapq.heappop(heap)
            if due.get(job_id) == ts:
                del due[job_id]
                popped.append((ts, job_id))
        return popped

    def clear(self) -> None:
        self._heap, self._due = [], {}
