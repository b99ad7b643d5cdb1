"""The durable outbox: one row per outgoing proactive message.

Enqueueing is a committed write; the delivery worker reads pending rows, sends them and records the
outcome. Outcomes are written in batches (`apply`), so a crash can re-send at most the rows that were
in flight or whose outcome was not yet flushed; see docs/architecture.md for the bound.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scheduler.clock import Clock

from .db import Connection, Database, Row, chunks, marks

Status = Literal["pending", "held", "sent", "failed", "dropped", "expired", "cancelled", "superseded", "merged"]
PRIORITIES = {"normal": 0, "urgent": 1}
REPLY_PRIORITY = 2  # a turn's reply that waits in the outbox: before every notification


@dataclass
class OutboxItem:
    """What a caller asks to send. Exactly one of `conversation_id` / `target_user_id` is usually set:
    a user alone means "open (or reuse) a 1:1 chat with this user"."""

    payload: dict[str, Any]
    conversation_id: str | None = None
    target_user_id: str | None = None
    tenant_id: str | None = None
    dedup_key: str | None = None
    category: str = "notification"
    subject: str | None = None
    priority: int = 0
    not_before: float | None = None
    expires_at: float | None = None
    kind: Literal["send", "update"] = "send"
    update_of: int | None = None
    status: Literal["pending", "held", "dropped"] = "pending"
    note: str | None = None  # kept as the row's last_error, e.g. why it was dropped

    def as_row(self, row_id: int, now: float) -> OutboxRow:
        """The row this item became (saves reading it back)."""
        return OutboxRow(
            id=row_id, conversation_id=self.conversation_id, target_user_id=self.target_user_id,
            tenant_id=self.tenant_id, kind=self.kind, update_of=self.update_of, payload=self.payload,
            category=self.category, subject=self.subject, priority=self.priority, status=self.status,
            not_before=self.not_before if self.not_before is not None else now, expires_at=self.expires_at,
            attempts=0, last_error=self.note, activity_id=None, dedup_key=self.dedup_key, created_at=now,
        )


@dataclass
class OutboxRow:
    id: int
    conversation_id: str | None
    target_user_id: str | None
    tenant_id: str | None
    kind: str
    update_of: int | None
    payload: dict[str, Any]
    category: str
    subject: str | None
    priority: int
    status: str
    not_before: float
    expires_at: float | None
    attempts: int
    last_error: str | None
    activity_id: str | None
    dedup_key: str | None
    created_at: float
    sent_at: float | None = None

    @classmethod
    def from_row(cls, row: Row) -> OutboxRow:
        return cls(
            id=row["id"],
            conversation_id=row["conversation_id"],
            target_user_id=row["target_user_id"],
            tenant_id=row["tenant_id"],
            kind=row["kind"],
            update_of=row["update_of"],
            payload=json.loads(row["payload"]),
            category=row["category"],
            subject=row["subject"],
            priority=row["priority"],
            status=row["status"],
            not_before=row["not_before"],
            expires_at=row["expires_at"],
            attempts=row["attempts"],
            last_error=row["last_error"],
            activity_id=row["activity_id"],
            dedup_key=row["dedup_key"],
            created_at=row["created_at"],
            sent_at=row["sent_at"],
        )

    def public(self) -> dict[str, Any]:
        """The view `GET /api/notify/{id}` returns."""
        return {
            "id": self.id,
            "status": self.status,
            "conversationId": self.conversation_id,
            "userId": self.target_user_id,
            "category": self.category,
            "priority": "urgent" if self.priority else "normal",
            "attempts": self.attempts,
            "lastError": self.last_error,
            "activityId": self.activity_id,
            "createdAt": self.created_at,
            "sentAt": self.sent_at,
        }


@dataclass(frozen=True)
class Enqueued:
    id: int
    created: bool  # False: the dedup key was already queued, nothing new was added


@dataclass
class Outcome:
    """A delivery result to record. Fields left None are not changed."""

    id: int
    status: str
    attempts: int | None = None
    last_error: str | None = None
    activity_id: str | None = None
    not_before: float | None = None
    conversation_id: str | None = None
    sent_at: float | None = None


_SELECT = "SELECT * FROM outbox"
_INSERT = (
    "INSERT INTO outbox (dedup_key, conversation_id, target_user_id, tenant_id, kind, update_of, payload, category, "
    "subject, priority, status, not_before, expires_at, created_at, updated_at, last_error)"
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_BATCH = 500  # rows per INSERT: 8,000 parameters, within both engines' limits


class OutboxStore:
    """Rows of the outbox table."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def enqueue(self, items: Sequence[OutboxItem], *, reason: str | None = None) -> list[Enqueued]:
        """Insert items in one transaction; an item whose dedup key exists returns the existing id.

        Rows go in as multi-row `INSERT … ON CONFLICT (dedup_key) DO NOTHING RETURNING` statements (one per
        `_BATCH` items), so a fan-out costs a few round trips, not one per target. `reason` is kept as the
        rows' note (e.g. why a notification was dropped)."""
        now = self._clock.now().timestamp()
        results: list[Enqueued] = []
        async with self._db.transaction() as tx:
            for batch in chunks(list(items), _BATCH):
                params: list[Any] = []
                for item in batch:
                    params += (
                        item.dedup_key, item.conversation_id, item.target_user_id, item.tenant_id, item.kind,
                        item.update_of, json.dumps(item.payload, separators=(",", ":")), item.category,
                        item.subject, item.priority, item.status,
                        item.not_before if item.not_before is not None else now, item.expires_at, now, now,
                        item.note or (reason if item.status == "dropped" else None),
                    )
                inserted = await tx.fetchall(
                    f"{_INSERT} VALUES {', '.join([_ROW] * len(batch))} ON CONFLICT (dedup_key) DO NOTHING "
                    "RETURNING id, dedup_key", params)
                results += await self._match(tx, batch, inserted)
        return results

    @staticmethod
    async def _match(tx: Connection, batch: Sequence[OutboxItem], inserted: Sequence[Row]) -> list[Enqueued]:
        """Which id each item got. Rows without a dedup key never conflict and take ids in VALUES order; a
        keyed item is new if the insert returned its key (first occurrence in the batch), else it was taken --
        by an earlier item of this batch, or by a writer that committed first, on any process."""
        by_key = {r["dedup_key"]: int(r["id"]) for r in inserted if r["dedup_key"] is not None}
        keyless = iter(sorted(int(r["id"]) for r in inserted if r["dedup_key"] is None))
        claimed: set[str] = set()
        out: list[Enqueued] = []
        for item in batch:
            key = item.dedup_key
            if key is None:
                out.append(Enqueued(next(keyless), created=True))
            elif key in by_key and key not in claimed:
                claimed.add(key)
                out.append(Enqueued(by_key[key], created=True))
            elif key in by_key:
                out.append(Enqueued(by_key[key], created=False))
            else:
                existing = await tx.fetchone("SELECT id FROM outbox WHERE dedup_key = ?", (key,))
                assert existing is not None
                by_key[key] = int(existing["id"])
                claimed.add(key)
                out.append(Enqueued(by_key[key], created=False))
        return out

    async def get(self, row_id: int) -> OutboxRow | None:
        row = await self._db.fetchone(f"{_SELECT} WHERE id = ?", (row_id,))
        return OutboxRow.from_row(row) if row else None

    async def get_many(self, ids: Iterable[int]) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        for chunk in chunks(list(ids)):
            found = await self._db.fetchall(f"{_SELECT} WHERE id IN ({marks(len(chunk))})", chunk)
            rows += [OutboxRow.from_row(r) for r in found]
        return rows

    async def pending(self) -> list[OutboxRow]:
        """Every row the worker should (eventually) send, oldest first."""
        rows = await self._db.fetchall(f"{_SELECT} WHERE status = 'pending' ORDER BY id")
        return [OutboxRow.from_row(r) for r in rows]

    async def held(self, conversation_id: str | None = None) -> list[OutboxRow]:
        if conversation_id is None:
            rows = await self._db.fetchall(f"{_SELECT} WHERE status = 'held' ORDER BY id")
        else:
            rows = await self._db.fetchall(
                f"{_SELECT} WHERE status = 'held' AND conversation_id = ? ORDER BY id", (conversation_id,)
            )
        return [OutboxRow.from_row(r) for r in rows]

    async def apply(self, outcomes: Sequence[Outcome]) -> None:
        """Record delivery outcomes in one transaction."""
        if not outcomes:
            return
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            await tx.executemany(
                """
                UPDATE outbox SET
                    status = ?,
                    attempts = COALESCE(?, attempts),
                    last_error = COALESCE(?, last_error),
                    activity_id = COALESCE(?, activity_id),
                    not_before = COALESCE(?, not_before),
                    conversation_id = COALESCE(?, conversation_id),
                    sent_at = COALESCE(?, sent_at),
                    updated_at = ?
                WHERE id = ?
                """,
                [
                    (o.status, o.attempts, o.last_error, o.activity_id, o.not_before, o.conversation_id, o.sent_at,
                     now, o.id)
                    for o in outcomes
                ],
            )

    async def set_status(
        self, ids: Sequence[int], status: Status, *, only_from: Sequence[str] = (), note: str | None = None
    ) -> int:
        """Move rows to `status` (e.g. held → pending on release). Returns how many changed."""
        if not ids:
            return 0
        now = self._clock.now().timestamp()
        changed = 0
        guard = f" AND status IN ({marks(len(only_from))})" if only_from else ""
        async with self._db.transaction() as tx:
            for chunk in chunks(list(ids)):
                changed += await tx.execute(
                    f"UPDATE outbox SET status = ?, updated_at = ?, last_error = COALESCE(?, last_error) "
                    f"WHERE id IN ({marks(len(chunk))}){guard}",
                    [status, now, note, *chunk, *only_from],
                )
        return changed

    async def retarget(self, row_id: int, conversation_id: str) -> None:
        """Pin a user-targeted row to the conversation it will be delivered in."""
        await self._db.execute("UPDATE outbox SET conversation_id = ? WHERE id = ?", (conversation_id, row_id))

    async def supersede(self, conversation_id: str, subject: str, *, keep: int) -> int:
        """Older held rows about `subject` in a conversation give way to row `keep`; returns how many."""
        return await self._db.execute(
            "UPDATE outbox SET status = 'superseded', last_error = ?, updated_at = ? "
            "WHERE conversation_id = ? AND subject = ? AND status = 'held' AND id != ?",
            (f"superseded by {keep}", self._clock.now().timestamp(), conversation_id, subject, keep),
        )

    async def cancel_conversation(self, conversation_id: str, reason: str) -> list[int]:
        """Cancel every pending or held row of a conversation; returns their ids."""
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE outbox SET status = 'cancelled', last_error = ?, updated_at = ? "
                "WHERE conversation_id = ? AND status IN ('pending', 'held') RETURNING id",
                (reason, now, conversation_id),
            )
        return [int(r["id"]) for r in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self._db.fetchall("SELECT status, COUNT(*) AS n FROM outbox GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}
