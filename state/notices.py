"""Notices: what people did with a broadcast after it reached them (acknowledgements, one per person).

An acknowledgement is keyed by (broadcast, person): a second press inserts nothing and counts nothing, and
two presses racing on two replicas still make one row (the primary key decides). The broadcast's
`acknowledged` count moves in the same transaction as the row it counts.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from . import outbox_counts
from .clock import Clock
from .db import Database, Row, marks


@dataclass(frozen=True)
class Acknowledgement:
    """When a person acknowledged a broadcast; `first` if this press recorded it."""

    at: float
    first: bool


class NoticeStore:
    """Acknowledgements of broadcasts."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def acknowledge(self, broadcast_id: int, user_id: str, user_aad_id: str | None,
                          conversation_id: str) -> Acknowledgement | None:
        """Record that `user_id` acknowledged the broadcast in `conversation_id` (once). None when the
        broadcast has no recipient row for that conversation: it never went there."""
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            sent_here = await tx.fetchone(
                "SELECT 1 AS x FROM outbox WHERE broadcast_id = ? AND conversation_id = ? LIMIT 1",
                (broadcast_id, conversation_id))
            if sent_here is None:
                return None
            added = await tx.execute(
                "INSERT INTO acknowledgements (broadcast_id, user_id, user_aad_id, conversation_id, acknowledged_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (broadcast_id, user_id) DO NOTHING",
                (broadcast_id, user_id, user_aad_id, conversation_id, now))
            if added:
                await tx.execute("UPDATE broadcasts SET acknowledged = acknowledged + 1 WHERE id = ?", (broadcast_id,))
                return Acknowledgement(now, first=True)
            row = await tx.fetchone(
                "SELECT acknowledged_at FROM acknowledgements WHERE broadcast_id = ? AND user_id = ?",
                (broadcast_id, user_id))
        assert row is not None
        return Acknowledgement(float(row["acknowledged_at"]), first=False)


@dataclass(frozen=True)
class RecipientRow:
    """One recipient of a broadcast as the delivery report shows it."""

    row_id: int
    aad_object_id: str | None
    teams_id: str | None
    name: str | None
    conversation_id: str | None
    status: str
    reason: str | None
    attempts: int
    sent_at: float | None
    acknowledged_at: float | None


class DeliveryReport:
    """A broadcast's recipients, page by page in outbox id order (keyset: memory stays flat in their number)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(self, broadcast_id: int, after: int, size: int) -> list[RecipientRow]:
        """The recipients after row id `after`, at most `size` of them."""
        rows = await self._db.fetchall(
            "SELECT o.id, o.conversation_id, o.target_user_id, o.last_error, o.attempts, o.sent_at, "
            "CASE WHEN o.recalled_at IS NOT NULL THEN 'recalled' ELSE o.status END AS status, "
            "r.user_id, r.user_aad_id, COALESCE(r.user_name, r.channel_name) AS name, "
            "(SELECT MIN(a.acknowledged_at) FROM acknowledgements a WHERE a.broadcast_id = o.broadcast_id "
            "AND a.conversation_id = o.conversation_id) AS acknowledged_at "
            "FROM outbox o LEFT JOIN conversation_refs r ON r.conversation_id = o.conversation_id "
            "WHERE o.broadcast_id = ? AND o.id > ? ORDER BY o.id LIMIT ?",
            (broadcast_id, after, size))
        return [RecipientRow(
            row_id=int(r["id"]), aad_object_id=r["user_aad_id"], teams_id=r["user_id"] or r["target_user_id"],
            name=r["name"], conversation_id=r["conversation_id"], status=r["status"], reason=r["last_error"],
            attempts=int(r["attempts"]), sent_at=r["sent_at"], acknowledged_at=r["acknowledged_at"],
        ) for r in rows]


STOPPED_CHANNEL = "broadcast_stopped"
"""Notification channel: a broadcast was cancelled; every replica stops sending its rows (payload: its id)."""


class NoticeControl:
    """Cancelling a broadcast, and what its estimated finish is computed from."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def cancel(self, broadcast_id: int) -> bool:
        """Mark the broadcast cancelled: its expansion writes no more rows (False: it already was)."""
        now = self._clock.now().timestamp()
        return bool(await self._db.execute(
            "UPDATE broadcasts SET state = 'cancelled', cancelled_at = ?, updated_at = ? "
            "WHERE id = ? AND state <> 'cancelled'", (now, now, broadcast_id)))

    async def cancel_rows(self, broadcast_id: int, after: int = 0, size: int = 5000) -> tuple[int, int | None]:
        """Cancel the not yet sent (pending or held) among the broadcast's next `size` rows after row id `after`:
        (how many, the last row id looked at; None when there are no more). Short transactions, and a walk by
        id that reads each row once however many recipients."""
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            page = await tx.fetchone(
                "SELECT MAX(id) AS last FROM (SELECT id FROM outbox WHERE broadcast_id = ? AND id > ? "
                "ORDER BY id LIMIT ?) p", (broadcast_id, after, size))
            last = page["last"] if page else None
            if last is None:
                return 0, None
            cancelled = await tx.execute(
                "UPDATE outbox SET status = 'cancelled', last_error = 'the notice was cancelled', updated_at = ? "
                "WHERE broadcast_id = ? AND id > ? AND id <= ? AND status IN ('pending', 'held')",
                (now, broadcast_id, after, int(last)))
        return cancelled, int(last)

    async def busiest_queue(self) -> float:
        """Pending rows in the busiest tenant's queue (each tenant has its own send budget), in bounded work:
        exact up to PENDING_CAP rows per tenant, beyond that estimated (state/outbox_counts.py)."""
        queues = await outbox_counts.tenant_queues(self._db)
        return outbox_counts.busiest_queue(queues, (await outbox_counts.status_counts(self._db)).get("pending", 0))

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """`callback(broadcast id)` when any replica cancels a broadcast (`*`: some may have been missed)."""
        self._db.subscribe(STOPPED_CHANNEL, callback)

    async def announce_stopped(self, broadcast_id: int) -> None:
        await self._db.notify(STOPPED_CHANNEL, str(broadcast_id))


class Audiences:
    """What a notice to everyone would reach, without writing anything (a dry run)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def everyone(self, tenants: Collection[str] | None, sample: int = 10) -> tuple[int, list[Row]]:
        """How many active conversations (of `tenants`, lower case, when given) and the first `sample` of them."""
        served, params = "", []
        if tenants:
            served = f" AND LOWER(TRIM(tenant_id)) IN ({marks(len(tenants))})"
            params = sorted(tenants)
        count = await self._db.fetchone(
            f"SELECT COUNT(*) AS n FROM conversation_refs WHERE active = 1{served}", params)
        rows = await self._db.fetchall(
            "SELECT conversation_id, tenant_id, conversation_type, user_id, user_aad_id, "
            f"COALESCE(user_name, channel_name) AS name FROM conversation_refs WHERE active = 1{served} "
            "ORDER BY conversation_id LIMIT ?", (*params, sample))
        return (int(count["n"]) if count else 0), rows


@dataclass(frozen=True)
class SentMessage:
    """A broadcast's message that went, and where (what a recall deletes)."""

    row_id: int
    conversation_id: str
    tenant_id: str | None
    activity_id: str


class RecallStore:
    """Which of a broadcast's messages went and are not recalled yet; marking them recalled."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def sent_page(self, broadcast_id: int, after: int, size: int) -> list[SentMessage]:
        """Sent, not recalled messages after row id `after` (keyset), at most `size`."""
        rows = await self._db.fetchall(
            "SELECT id, conversation_id, tenant_id, activity_id FROM outbox WHERE broadcast_id = ? AND id > ? "
            "AND status = 'sent' AND activity_id IS NOT NULL AND conversation_id IS NOT NULL "
            "AND recalled_at IS NULL ORDER BY id LIMIT ?", (broadcast_id, after, size))
        return [SentMessage(int(r["id"]), str(r["conversation_id"]), r["tenant_id"], str(r["activity_id"]))
                for r in rows]

    async def to_recall(self, broadcast_id: int) -> int:
        row = await self._db.fetchone(
            "SELECT COUNT(*) AS n FROM outbox WHERE broadcast_id = ? AND status = 'sent' "
            "AND activity_id IS NOT NULL AND recalled_at IS NULL", (broadcast_id,))
        return int(row["n"]) if row else 0

    async def mark_recalled(self, broadcast_id: int, row_ids: Sequence[int]) -> int:
        """Record the messages deleted; the broadcast counts them (each once)."""
        if not row_ids:
            return 0
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            marked = await tx.execute(
                f"UPDATE outbox SET recalled_at = ? WHERE id IN ({marks(len(row_ids))}) AND recalled_at IS NULL",
                (now, *row_ids))
            if marked:
                await tx.execute("UPDATE broadcasts SET recalled = recalled + ? WHERE id = ?", (marked, broadcast_id))
        return marked
