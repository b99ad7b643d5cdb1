"""Notification preferences: who muted notifications, and until when.

A subject is a user (`user:<teams id>`) — what `mute` in a 1:1 chat sets — or a whole conversation
(`conversation:<id>`) — what `mute` in a group chat or channel sets.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from scheduler.clock import Clock

from .db import Database, chunks, marks


class Preferences:
    """Mute state per subject. Muting without an end lasts until `unmute`."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def mute(self, subject: str, until: datetime | None) -> None:
        await self._db.execute(
            "INSERT INTO preferences (subject, muted, muted_until, updated_at) VALUES (?, 1, ?, ?) "
            "ON CONFLICT (subject) DO UPDATE SET muted = 1, muted_until = excluded.muted_until, "
            "updated_at = excluded.updated_at",
            (subject, until.timestamp() if until else None, self._clock.now().timestamp()),
        )

    async def unmute(self, subject: str) -> bool:
        """Returns whether the subject was muted."""
        was = await self.muted_until(subject)
        await self._db.execute(
            "UPDATE preferences SET muted = 0, muted_until = NULL, updated_at = ? WHERE subject = ?",
            (self._clock.now().timestamp(), subject),
        )
        return was is not None

    async def muted_until(self, subject: str) -> datetime | None:
        """None when not muted now; `datetime.max` (UTC) when muted until unmute; else the end."""
        row = await self._db.fetchone("SELECT muted, muted_until FROM preferences WHERE subject = ?", (subject,))
        if row is None or not row["muted"]:
            return None
        if row["muted_until"] is None:
            return datetime.max.replace(tzinfo=UTC)
        until = datetime.fromtimestamp(row["muted_until"], tz=UTC)
        return until if until > self._clock.now() else None

    async def muted(self, subjects: Iterable[str]) -> set[str]:
        """Which of `subjects` are muted now (one query)."""
        wanted = list(dict.fromkeys(subjects))
        now = self._clock.now().timestamp()
        out: set[str] = set()
        for chunk in chunks(wanted):
            rows = await self._db.fetchall(
                f"SELECT subject FROM preferences WHERE muted = 1 AND (muted_until IS NULL OR muted_until > ?) "
                f"AND subject IN ({marks(len(chunk))})",
                [now, *chunk],
            )
            out.update(r["subject"] for r in rows)
        return out
