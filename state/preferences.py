"""Notification preferences: mutes, time zones, quiet hours and the daily digest.

A subject is a user (`user:<teams id>`) — what `mute`, `quiet` and `digest` in a 1:1 chat set, and whose
time zone Teams reports on their activities — or a whole conversation (`conversation:<id>`) — what those
commands set in a group chat or channel (with the time zone of the member who set them).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from state.clock import Clock

from .db import ANY, CACHE_CHANNEL, Database, Row, chunks, marks
from .model import DEFAULT_TIMEZONE, UNTIL_UNMUTED, NotificationSettings, QuietHours

_UPSERT = "INSERT INTO preferences (subject, {columns}, updated_at) VALUES (?, {marks}, ?) " \
          "ON CONFLICT (subject) DO UPDATE SET {updates}, updated_at = excluded.updated_at"


class Preferences:
    """Preferences per subject. Muting without an end lasts until `unmute`; the time zone is UTC until known."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._reported: dict[str, str] = {}  # subject → zone Teams last reported, so a turn writes only changes
        db.subscribe(CACHE_CHANNEL, self._invalidated)

    def _invalidated(self, payload: str) -> None:
        """`choose_timezone` here or in another replica: the next reported zone is written again."""
        if payload == ANY:
            self._reported.clear()
        elif payload.startswith("timezone:"):
            self._reported.pop(payload.removeprefix("timezone:"), None)

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

    # -- time zone, quiet hours, daily digest -------------------------------------------------------------

    async def _upsert(self, subject: str, values: dict[str, object]) -> int:
        columns = list(values)
        sql = _UPSERT.format(columns=", ".join(columns), marks=", ".join("?" * len(columns)),
                             updates=", ".join(f"{c} = excluded.{c}" for c in columns))
        return await self._db.execute(sql, (subject, *values.values(), self._clock.now().timestamp()))

    async def remember_timezone(self, subject: str, timezone: str) -> bool:
        """The zone Teams reported for a user; ignored when they chose one with `timezone`. True if it changed."""
        if self._reported.get(subject) == timezone:
            return False
        if len(self._reported) > 100_000:
            self._reported.clear()
        self._reported[subject] = timezone
        return await self._db.execute(
            "INSERT INTO preferences (subject, timezone, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (subject) DO UPDATE SET timezone = excluded.timezone, updated_at = excluded.updated_at "
            "WHERE preferences.timezone_chosen = 0 "
            "AND (preferences.timezone IS NULL OR preferences.timezone <> excluded.timezone)",
            (subject, timezone, self._clock.now().timestamp()),
        ) > 0

    async def choose_timezone(self, subject: str, timezone: str | None) -> None:
        """Set the zone by hand (`timezone Europe/Berlin`), or None to follow what Teams reports again."""
        if timezone is None:
            await self._upsert(subject, {"timezone_chosen": 0})
        else:
            await self._upsert(subject, {"timezone": timezone, "timezone_chosen": 1})
        await self._db.notify(CACHE_CHANNEL, f"timezone:{subject}")

    async def set_quiet(self, subject: str, quiet: QuietHours | None, *, timezone: str | None = None) -> None:
        """Quiet hours on (or off with None); `timezone` is stored with them for a conversation subject."""
        values: dict[str, object] = {"quiet_start": quiet.start if quiet else None,
                                     "quiet_end": quiet.end if quiet else None}
        if timezone is not None:
            values["timezone"] = timezone
        await self._upsert(subject, values)

    async def set_digest(self, subject: str, at: str | None, *, timezone: str | None = None) -> None:
        """A daily digest at local time `at` (`HH:MM`), or off with None."""
        values: dict[str, object] = {"digest_at": at}
        if timezone is not None:
            values["timezone"] = timezone
        await self._upsert(subject, values)

    async def settings(self, subject: str) -> NotificationSettings:
        """What `subject` chose; the defaults (UTC, nothing on) when it chose nothing."""
        return (await self.settings_of([subject])).get(subject, NotificationSettings())

    async def settings_of(self, subjects: Iterable[str]) -> dict[str, NotificationSettings]:
        """`settings()` for the subjects that have a row (one query per 500)."""
        wanted = list(dict.fromkeys(subjects))
        out: dict[str, NotificationSettings] = {}
        for chunk in chunks(wanted):
            rows = await self._db.fetchall(f"SELECT * FROM preferences WHERE subject IN ({marks(len(chunk))})", chunk)
            out.update((r["subject"], self._settings(r)) for r in rows)
        return out

    async def timezone(self, subject: str) -> str:
        """The subject's IANA zone name (UTC until known)."""
        return (await self.settings(subject)).timezone

    def _settings(self, row: Row) -> NotificationSettings:
        muted_until: datetime | None = None
        if row["muted"]:
            if row["muted_until"] is None:
                muted_until = UNTIL_UNMUTED
            elif (until := datetime.fromtimestamp(row["muted_until"], tz=UTC)) > self._clock.now():
                muted_until = until
        quiet = QuietHours(row["quiet_start"], row["quiet_end"]) if row["quiet_start"] and row["quiet_end"] else None
        return NotificationSettings(
            timezone=row["timezone"] or DEFAULT_TIMEZONE, timezone_chosen=bool(row["timezone_chosen"]),
            quiet=quiet, digest_at=row["digest_at"], muted_until=muted_until,
        )
