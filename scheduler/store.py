"""The `scheduled_jobs` table: every statement the scheduler runs against the database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .jobs import Job, JobState, Misfire

if TYPE_CHECKING:
    from state.db import Connection, Database, Row

from state.db import chunks, marks

InsertRow = tuple[Any, ...]

# A job holding the same key is replaced in place: same row, new id and schedule, fresh state.
_INSERT = (
    "INSERT INTO scheduled_jobs (id, key, handler, payload, due_at, slot_at, interval_s, jitter_s,"
    " misfire, grace_s, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (key) WHERE key IS NOT NULL DO UPDATE SET id = excluded.id, handler = excluded.handler,"
    " payload = excluded.payload, due_at = excluded.due_at, slot_at = excluded.slot_at,"
    " interval_s = excluded.interval_s, jitter_s = excluded.jitter_s, misfire = excluded.misfire,"
    " grace_s = excluded.grace_s, created_at = excluded.created_at, state = 'pending', attempts = 0,"
    " lease_until = NULL, last_error = NULL, claimed_by = NULL"
)


def ts(when: datetime) -> float:
    """A time as stored: epoch seconds."""
    return when.timestamp()


def from_ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def insert_row(job: Job) -> InsertRow:
    """The parameters of `_INSERT` for a new job (payload is serialised here, so bad payloads fail early)."""
    return (
        job.id,
        job.key,
        job.handler,
        json.dumps(job.payload, separators=(",", ":")),
        ts(job.due_at),
        ts(job.slot_at) if job.slot_at is not None else None,
        job.interval_s,
        job.jitter_s,
        job.misfire.value,
        job.grace_s,
        ts(job.created_at or job.due_at),
    )


def job_from_row(row: Row) -> Job:
    return Job(
        id=row["id"],
        handler=row["handler"],
        payload=json.loads(row["payload"]),
        due_at=from_ts(row["due_at"]),
        key=row["key"],
        interval_s=row["interval_s"],
        jitter_s=row["jitter_s"],
        slot_at=from_ts(row["slot_at"]) if row["slot_at"] is not None else None,
        misfire=Misfire(row["misfire"]),
        grace_s=row["grace_s"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        lease_until=from_ts(row["lease_until"]) if row["lease_until"] is not None else None,
        last_error=row["last_error"],
        created_at=from_ts(row["created_at"]),
    )


class JobStore:
    """SQL for jobs. Single statements run in autocommit (one round trip); multi-row work in a transaction.

    Every update of a claimed job is conditional on `state = 'running'`, so a job replaced or cancelled
    while its handler ran is not resurrected when the handler finishes.
    """

    def __init__(self, db: Database, owner: str = "") -> None:
        self._db = db
        self.owner = owner  # who claims here (the replica id): only the claimer settles a run

    async def insert(self, job: Job, conn: Connection | None = None) -> None:
        """Insert, or atomically replace the job holding the same key (one upsert); on `conn` to commit with the
        caller's other writes."""
        await (conn or self._db).execute(_INSERT, insert_row(job))

    async def insert_many(self, rows: Sequence[InsertRow]) -> None:
        async with self._db.transaction() as tx:
            await tx.executemany(_INSERT, rows)

    async def reclaim_expired(self, now: datetime) -> int:
        """Return runs whose lease expired (their process died) to pending; returns how many."""
        return await self._db.execute(
            "UPDATE scheduled_jobs SET state = 'pending', lease_until = NULL"
            " WHERE state = 'running' AND lease_until <= ?",
            (ts(now),),
        )

    async def runnable(self, page: int = 10_000) -> AsyncIterator[list[Row]]:
        """Every job that may run again, as pages of (id, handler, due_at, state, lease_until) rows.

        Paging by id keeps the peak memory of a restart with many pending jobs small."""
        after = ""
        while True:
            rows = await self._db.fetchall(
                "SELECT id, handler, due_at, state, lease_until FROM scheduled_jobs"
                " WHERE id > ? AND state != 'dead' ORDER BY id LIMIT ?",
                (after, page),
            )
            if not rows:
                return
            yield rows
            after = rows[-1]["id"]

    async def claim(self, ids: Sequence[str], now: datetime, lease_until: datetime) -> list[Job]:
        """Mark the given jobs running with a lease, if they are still due; returns those claimed."""
        claimed: list[Job] = []
        now_ts = ts(now)
        for chunk in chunks(ids):
            rows = await self._db.fetchall(
                "UPDATE scheduled_jobs SET state = 'running', lease_until = ?, attempts = attempts + 1,"
                " claimed_by = ?"
                f" WHERE id IN ({marks(len(chunk))}) AND state IN ('pending', 'running')"
                # one expression, not an OR of the partial indexes' predicates: a cached generic plan on
                # PostgreSQL would scan those indexes (every due job) instead of looking the ids up
                " AND CASE WHEN state = 'pending' THEN due_at ELSE lease_until END <= ?"
                " RETURNING *",
                (ts(lease_until), self.owner, *chunk, now_ts),
            )
            claimed.extend(job_from_row(row) for row in rows)
        return claimed

    async def complete_many(self, ids: Sequence[str]) -> set[str]:
        """`complete` for many jobs in one statement per chunk; returns the ids that were deleted."""
        deleted: set[str] = set()
        for chunk in chunks(list(ids)):
            rows = await self._db.fetchall(
                f"DELETE FROM scheduled_jobs WHERE id IN ({marks(len(chunk))}) AND state = 'running'"
                " AND claimed_by = ? RETURNING id",
                (*chunk, self.owner),
            )
            deleted.update(str(r["id"]) for r in rows)
        return deleted

    async def complete(self, job_id: str) -> bool:
        """A one-shot job succeeded (or was skipped): it is done and leaves the table."""
        return await self._db.execute(
            "DELETE FROM scheduled_jobs WHERE id = ? AND state = 'running' AND claimed_by = ?", (job_id, self.owner)
        ) > 0

    async def reschedule(
        self,
        job_id: str,
        due_at: datetime,
        *,
        slot_at: datetime | None,
        attempts: int,
        last_error: str | None,
    ) -> bool:
        """A claimed job goes back to pending at `due_at` (next slot, or a retry after backoff)."""
        changed = await self._db.execute(
            "UPDATE scheduled_jobs SET state = 'pending', lease_until = NULL, claimed_by = NULL, due_at = ?,"
            " slot_at = ?, attempts = ?, last_error = ? WHERE id = ? AND state = 'running' AND claimed_by = ?",
            (ts(due_at), ts(slot_at) if slot_at is not None else None, attempts, last_error, job_id, self.owner),
        )
        return changed > 0

    async def bury(self, job_id: str, last_error: str) -> bool:
        """Out of attempts: keep the job as dead with its last error."""
        changed = await self._db.execute(
            "UPDATE scheduled_jobs SET state = 'dead', lease_until = NULL, claimed_by = NULL, last_error = ?"
            " WHERE id = ? AND state = 'running' AND claimed_by = ?",
            (last_error, job_id, self.owner),
        )
        return changed > 0

    async def release(self, ids: Sequence[str]) -> None:
        """Runs interrupted by a graceful stop: runnable again at once, and the attempt does not count."""
        async with self._db.transaction() as tx:
            for chunk in chunks(ids):
                await tx.execute(
                    "UPDATE scheduled_jobs SET state = 'pending', lease_until = NULL, claimed_by = NULL,"
                    " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
                    f" WHERE id IN ({marks(len(chunk))}) AND state = 'running' AND claimed_by = ?",
                    (*chunk, self.owner),
                )

    async def renew(self, ids: Sequence[str], lease_until: datetime) -> set[str]:
        """Heartbeat: extend the leases of runs this owner still holds; returns the ids it still holds."""
        held: set[str] = set()
        for chunk in chunks(list(ids)):
            rows = await self._db.fetchall(
                f"UPDATE scheduled_jobs SET lease_until = ? WHERE id IN ({marks(len(chunk))})"
                " AND state = 'running' AND claimed_by = ? RETURNING id",
                (ts(lease_until), *chunk, self.owner),
            )
            held.update(str(r["id"]) for r in rows)
        return held

    async def due_by(self, until: datetime) -> list[tuple[float, str]]:
        """(due timestamp, id) of every job that may be claimed by `until`: pending ones due by then, and runs
        whose lease ends by then (their process died) -- what another replica scheduled or left behind."""
        until_ts = ts(until)
        rows = await self._db.fetchall(
            "SELECT id, due_at, state, lease_until FROM scheduled_jobs"
            " WHERE (state = 'pending' AND due_at <= ?) OR (state = 'running' AND lease_until <= ?)",
            (until_ts, until_ts),
        )
        return [(float(r["lease_until"] if r["state"] == "running" else r["due_at"]), str(r["id"])) for r in rows]

    async def delete(self, *, job_id: str | None = None, key: str | None = None) -> bool:
        if job_id is not None:
            return await self._db.execute("DELETE FROM scheduled_jobs WHERE id = ?", (job_id,)) > 0
        return await self._db.execute("DELETE FROM scheduled_jobs WHERE key = ?", (key,)) > 0

    async def get(self, *, job_id: str | None = None, key: str | None = None) -> Job | None:
        if job_id is not None:
            row = await self._db.fetchone("SELECT * FROM scheduled_jobs WHERE id = ?", (job_id,))
        else:
            row = await self._db.fetchone("SELECT * FROM scheduled_jobs WHERE key = ?", (key,))
        return job_from_row(row) if row is not None else None

    async def list_by_prefix(self, prefix: str | None) -> list[Job]:
        if prefix is None:
            rows = await self._db.fetchall("SELECT * FROM scheduled_jobs ORDER BY due_at, id")
        else:
            # substr, not LIKE (SQLite's LIKE ignores case) nor a range (PostgreSQL collations do not sort bytewise)
            rows = await self._db.fetchall(
                "SELECT * FROM scheduled_jobs WHERE substr(key, 1, ?) = ? ORDER BY due_at, id",
                (len(prefix), prefix),
            )
        return [job_from_row(row) for row in rows]

    async def purge_dead(self, before: datetime, limit: int = 500) -> int:
        """Delete up to `limit` dead jobs due before `before` (retention); returns how many."""
        return await self._db.execute(
            "DELETE FROM scheduled_jobs WHERE id IN (SELECT id FROM scheduled_jobs WHERE state = 'dead' "
            "AND due_at < ? LIMIT ?)",
            (ts(before), limit),
        )

    async def dead(self) -> list[Job]:
        rows = await self._db.fetchall("SELECT * FROM scheduled_jobs WHERE state = 'dead' ORDER BY due_at, id")
        return [job_from_row(row) for row in rows]
