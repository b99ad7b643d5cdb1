"""Inbound activities already processed, so one that Teams sends again is answered once.

Teams re-sends an activity whose answer was not a 2xx (a 503 while the database was away) or took longer than
about 15 s, with the same activity id. A turn asks `seen` before it runs and `record`s the id once its work is
saved; the turn gate runs turns of one conversation one after the other, so a re-send arriving while the first
try still runs finds it recorded. Rows are kept for a day (`purge`), far longer than Teams retries.
"""

from __future__ import annotations

from .clock import Clock
from .db import Database

KEEP_S = 86_400.0


class ProcessedActivities:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def seen(self, conversation_id: str, activity_id: str) -> bool:
        row = await self._db.fetchone(
            "SELECT 1 AS seen FROM processed_activities WHERE conversation_id = ? AND activity_id = ?",
            (conversation_id, activity_id))
        return row is not None

    async def record(self, conversation_id: str, activity_id: str) -> None:
        await self._db.execute(
            "INSERT INTO processed_activities (conversation_id, activity_id, processed_at) VALUES (?, ?, ?) "
            "ON CONFLICT (conversation_id, activity_id) DO NOTHING",
            (conversation_id, activity_id, self._clock.now().timestamp()))

    async def purge(self, before: float | None = None, limit: int = 500) -> int:
        """Forget up to `limit` activities processed before `before` (default: a day ago); returns how many."""
        cutoff = self._clock.now().timestamp() - KEEP_S if before is None else before
        return await self._db.execute(
            "DELETE FROM processed_activities WHERE (conversation_id, activity_id) IN ("
            " SELECT conversation_id, activity_id FROM processed_activities WHERE processed_at < ? LIMIT ?)",
            (cutoff, limit))
