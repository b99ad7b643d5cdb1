"""Broadcasts: one notice to many recipients, said once, its recipients written page by page.

A broadcast row holds what is said (payload, priority, expiry, dedup key), to whom (the request's audience),
how far its expansion got (`cursor`: the last conversation id written, or a position in a list) and its
recipient rows counted by status. The counts are kept by triggers on the outbox (migration 14) as the rows
change, so reading a broadcast's progress costs one row however many recipients it has. Each recipient is
an outbox row with `broadcast_id` and an empty payload.

A page of the expansion is one transaction: the rows and the cursor that says they are written commit
together, so an expansion resumed after a crash goes on from the cursor without duplicates. On PostgreSQL
the page also locks its broadcast (two replicas never write the same page) and, with a dedup key, the
first broadcast of that key (recipients of a key are checked and written by one transaction at a time).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .db import Connection, Database, Row, chunks, marks
from .migrations import BROADCAST_STATUSES
from .outbox import Enqueued, OutboxItem, OutboxStore

EXPANDING, EXPANDED = "expanding", "expanded"
SCHEDULED, CANCELLED = "scheduled", "cancelled"  # waiting for its sendAt; cancelled (state/notices.py)


@dataclass(frozen=True)
class Broadcast:
    """A broadcast and how far it got."""

    id: int
    public_id: str
    state: str
    audience: dict[str, Any]
    payload: dict[str, Any]
    category: str
    priority: int
    expires_at: float | None
    dedup_key: str | None
    cursor: str | None
    requested: int
    unknown: int
    inactive: int
    counts: dict[str, int]
    created_at: float
    expanded_at: float | None
    last_change: float
    acknowledged: int = 0  # people who pressed its Acknowledge button (state/notices.py)
    send_at: float | None = None  # when a scheduled broadcast goes
    cancelled_at: float | None = None
    recalled: int = 0  # its sent messages deleted again (POST …/recall)

    @classmethod
    def from_row(cls, row: Row) -> Broadcast:
        return cls(
            id=int(row["id"]), public_id=row["public_id"], state=row["state"], audience=json.loads(row["audience"]),
            payload=json.loads(row["payload"]) if row["payload"] else {}, category=row["category"],
            priority=int(row["priority"]), expires_at=row["expires_at"], dedup_key=row["dedup_key"],
            cursor=row["cursor"], requested=int(row["requested"]), unknown=int(row["unknown"]),
            inactive=int(row["inactive"]),
            counts={s: int(row[f"n_{s}"]) for s in BROADCAST_STATUSES if row[f"n_{s}"]},
            created_at=float(row["created_at"]), expanded_at=row["expanded_at"], last_change=float(row["updated_at"]),
            acknowledged=int(row["acknowledged"] or 0), send_at=row["send_at"], cancelled_at=row["cancelled_at"],
            recalled=int(row["recalled"] or 0),
        )

    @property
    def finished(self) -> bool:
        """Every recipient written and none waiting any more (sent, failed, dropped, expired, cancelled...)."""
        return self.state not in (EXPANDING, SCHEDULED) and not any(self.counts.get(s) for s in ("pending", "held"))

    @property
    def targets(self) -> int:
        """Recipient rows written so far."""
        return sum(self.counts.values())


ANALYZE_AFTER = 10_000
"""Rows a broadcast writes before the end of its expansion refreshes PostgreSQL's statistics of the outbox."""


@dataclass(frozen=True)
class Page:
    """What one page of an expansion did."""

    resolved: int  # targets looked at
    written: int  # recipient rows added
    done: bool  # the audience is exhausted: the broadcast is expanded


class BroadcastStore:
    """Rows of the broadcasts table, and the pages of recipients written into the outbox."""

    def __init__(self, db: Database, outbox: OutboxStore, clock: Clock) -> None:
        self._db = db
        self._outbox = outbox
        self._clock = clock

    async def create(self, public_id: str, audience: dict[str, Any], payload: dict[str, Any], *,
                     priority: int = 0, expires_at: float | None = None, dedup_key: str | None = None,
                     category: str = "notification", send_at: float | None = None,
                     also: Callable[[Connection, int], Awaitable[None]] | None = None) -> int:
        """Record a broadcast's intent (with `send_at`: scheduled); `also(tx, id)` writes what must commit with
        it (the job that expands it). Returns its id."""
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                "INSERT INTO broadcasts (public_id, audience, payload, category, priority, expires_at, dedup_key, "
                "created_at, updated_at, state, send_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (public_id, json.dumps(audience, separators=(",", ":")), json.dumps(payload, separators=(",", ":")),
                 category, priority, expires_at, dedup_key, now, now, EXPANDING if send_at is None else SCHEDULED,
                 send_at))
            assert row is not None
            broadcast_id = int(row["id"])
            if also is not None:
                await also(tx, broadcast_id)
        return broadcast_id

    async def get(self, public_id: str) -> Broadcast | None:
        row = await self._db.fetchone("SELECT * FROM broadcasts WHERE public_id = ?", (public_id,))
        return Broadcast.from_row(row) if row else None

    async def get_by_id(self, broadcast_id: int) -> Broadcast | None:
        row = await self._db.fetchone("SELECT * FROM broadcasts WHERE id = ?", (broadcast_id,))
        return Broadcast.from_row(row) if row else None

    async def expanding(self) -> list[int]:
        """Broadcasts whose recipients are still being written."""
        return [int(r["id"]) for r in await self._db.fetchall(
            "SELECT id FROM broadcasts WHERE state = 'expanding' ORDER BY id")]

    async def scheduled(self) -> list[tuple[int, float]]:
        """Broadcasts waiting for their time, with it."""
        return [(int(r["id"]), float(r["send_at"])) for r in await self._db.fetchall(
            "SELECT id, send_at FROM broadcasts WHERE state = 'scheduled' ORDER BY id")]

    async def release(self, broadcast_id: int) -> bool:
        """A scheduled broadcast's time came: its recipients may be written now (False: it was not waiting)."""
        return bool(await self._db.execute(
            "UPDATE broadcasts SET state = 'expanding', updated_at = ? WHERE id = ? AND state = 'scheduled'",
            (self._clock.now().timestamp(), broadcast_id)))

    async def _lock(self, tx: Connection, broadcast_id: int) -> Row | None:
        """The broadcast, locked for this page (PostgreSQL; SQLite's writer is alone anyway), and the first
        broadcast of its dedup key with it."""
        lock = f" {self._db.row_lock.replace(' SKIP LOCKED', '')}" if self._db.row_lock else ""
        head = await tx.fetchone(
            f"SELECT state, cursor, dedup_key, category, priority, expires_at FROM broadcasts WHERE id = ?{lock}",
            (broadcast_id,))
        if head is not None and head["dedup_key"] is not None and lock:
            await tx.fetchone(f"SELECT id FROM broadcasts WHERE dedup_key = ? ORDER BY id LIMIT 1{lock}",
                              (head["dedup_key"],))
        return head

    async def expand_all_page(self, broadcast_id: int, size: int, *, tenants: Collection[str] | None = None) -> Page:
        """Write the next `size` active conversations (in conversation id order) as recipients, in SQL: no
        conversation passes through this process. Conversations an earlier broadcast with the same dedup key
        reached are skipped (counted as duplicates); with `tenants` (lower case), only conversations of those
        tenants are targets at all."""
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            head = await self._lock(tx, broadcast_id)
            if head is None or head["state"] != EXPANDING:
                return Page(0, 0, True)
            after = head["cursor"] or ""
            served, served_params = "", []
            if tenants:
                served = f" AND LOWER(TRIM(r.tenant_id)) IN ({marks(len(tenants))})"
                served_params = sorted(tenants)
            page = await tx.fetchone(
                "SELECT COUNT(*) AS n, MAX(conversation_id) AS last, "
                f"SUM(CASE WHEN 1 = 1{served} THEN 1 ELSE 0 END) AS targets FROM (SELECT r.conversation_id, "
                "r.tenant_id FROM conversation_refs r WHERE r.active = 1 AND r.conversation_id > ? "
                "ORDER BY r.conversation_id LIMIT ?) r",
                (*served_params, after, size))
            scanned = int(page["n"]) if page else 0
            resolved = int(page["targets"] or 0) if page else 0
            written = 0
            if scanned:
                last = str(page["last"]) if page else after
                dedup, params = "", []
                if head["dedup_key"] is not None:
                    dedup = (" AND NOT EXISTS (SELECT 1 FROM outbox o JOIN broadcasts b ON b.id = o.broadcast_id "
                             "WHERE o.conversation_id = r.conversation_id AND b.dedup_key = ? AND b.id <> ?)")
                    params = [head["dedup_key"], broadcast_id]
                written = await tx.execute(
                    "INSERT INTO outbox (conversation_id, tenant_id, kind, payload, category, priority, status, "
                    "not_before, expires_at, created_at, updated_at, broadcast_id, undecided) "
                    "SELECT r.conversation_id, r.tenant_id, 'send', '', '', ?, 'pending', ?, ?, ?, ?, ?, 1 "
                    "FROM conversation_refs r WHERE r.active = 1 AND r.conversation_id > ? AND r.conversation_id <= ?"
                    f"{served}{dedup}",
                    (head["priority"], now, head["expires_at"], now, now, broadcast_id, after, last,
                     *served_params, *params))
                after = last
            await self.advance(tx, broadcast_id, cursor=after, resolved=max(resolved, written), done=scanned < size)
        return Page(resolved, written, scanned < size)

    async def write_page(self, broadcast_id: int, items: Sequence[OutboxItem], *, cursor: str, resolved: int,
                         unknown: int = 0, inactive: int = 0, done: bool) -> tuple[list[Enqueued], dict[int, int]]:
        """Write resolved recipients (a page of a list, or a whole small request) with the cursor after them.

        Items whose conversation an earlier broadcast with the same dedup key reached are not written: the
        second result maps their index to that row's id. Returns the outcome of the items written (an item
        whose own dedup key exists is not new: `created` False) and those skipped."""
        async with self._db.transaction() as tx:
            head = await self._lock(tx, broadcast_id)
            if head is None or head["state"] != EXPANDING:
                return [], {}
            reached = await self.reached(broadcast_id, head["dedup_key"], items, tx)
            fresh = [item for n, item in enumerate(items) if n not in reached]
            results = await self._outbox.insert(tx, fresh)
            await self.advance(tx, broadcast_id, cursor=cursor, resolved=resolved, unknown=unknown, inactive=inactive,
                               done=done)
        return results, reached

    async def reached(self, broadcast_id: int, dedup_key: str | None, items: Sequence[OutboxItem],
                      tx: Connection | None = None) -> dict[int, int]:
        """Items (by index) whose conversation already has a row of another broadcast with this dedup key,
        with that row's id."""
        if dedup_key is None:
            return {}
        db = tx or self._db
        wanted = sorted({i.conversation_id for i in items if i.conversation_id})
        found: dict[str, int] = {}
        for chunk in chunks(wanted, 500):
            for row in await db.fetchall(
                    "SELECT o.id, o.conversation_id FROM outbox o JOIN broadcasts b ON b.id = o.broadcast_id "
                    f"WHERE b.dedup_key = ? AND b.id <> ? AND o.conversation_id IN ({marks(len(chunk))}) "
                    "ORDER BY o.id", (dedup_key, broadcast_id, *chunk)):
                found.setdefault(str(row["conversation_id"]), int(row["id"]))
        return {n: found[i.conversation_id] for n, i in enumerate(items)
                if i.conversation_id and i.conversation_id in found}

    async def advance(self, tx: Connection, broadcast_id: int, *, cursor: str, resolved: int, unknown: int = 0,
                      inactive: int = 0, done: bool) -> None:
        """Record a page written (on its transaction): the cursor after it and the targets it resolved
        (reachable ones; those not written were duplicates), unknown or inactive."""
        now = self._clock.now().timestamp()
        await tx.execute(
            "UPDATE broadcasts SET cursor = ?, requested = requested + ?, unknown = unknown + ?, "
            "inactive = inactive + ?, state = ?, expanded_at = ?, updated_at = ? WHERE id = ?",
            (cursor, resolved, unknown, inactive, EXPANDED if done else EXPANDING, now if done else None, now,
             broadcast_id))

    async def finish(self, broadcast_id: int, *, resolved: int, unknown: int = 0, inactive: int = 0) -> None:
        """A broadcast written whole at once without a row (every target a duplicate, unknown or inactive)."""
        async with self._db.transaction() as tx:
            await self.advance(tx, broadcast_id, cursor="", resolved=resolved, unknown=unknown, inactive=inactive,
                               done=True)

    async def expanded(self, rows: int) -> None:
        """A broadcast's recipients are all written, `rows` of them. After many, on PostgreSQL, the planner's
        statistics of the outbox are refreshed (ANALYZE: a sample; it blocks no reads or writes). Until
        autovacuum's next analyze (a minute or more away) the planner takes a broadcast for a few rows, and the
        delivery report's keyset pages sort every row of the broadcast per page (100,000 rows: 2.6 s instead
        of 0.5)."""
        if self._db.engine == "postgresql" and rows >= ANALYZE_AFTER:
            await self._db.execute("ANALYZE outbox")

    async def purge_rows(self, before: float, limit: int = 500) -> int:
        """Delete up to `limit` rows of a broadcast that finished (every row written, none pending or held)
        and last changed before `before`; returns how many (call again until it returns less than `limit`).
        Its counters go down with them in the same transaction: they count the rows there are (the outbox's
        counts add them up, state/outbox_counts.py)."""
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                "DELETE FROM outbox WHERE id IN (SELECT o.id FROM outbox o WHERE o.broadcast_id = (SELECT b.id "
                "FROM broadcasts b WHERE b.state <> 'expanding' AND b.n_pending = 0 AND b.n_held = 0 "
                "AND b.updated_at < ? AND EXISTS (SELECT 1 FROM outbox r WHERE r.broadcast_id = b.id) "
                "ORDER BY b.id LIMIT 1) LIMIT ?) RETURNING broadcast_id, status",
                (before, limit),
            )
            gone: dict[int, dict[str, int]] = {}
            for row in rows:
                by_status = gone.setdefault(int(row["broadcast_id"]), {})
                by_status[row["status"]] = by_status.get(row["status"], 0) + 1
            for broadcast_id, by_status in gone.items():
                await tx.execute(
                    "UPDATE broadcasts SET " + ", ".join(f"n_{s} = n_{s} - ?" for s in BROADCAST_STATUSES)
                    + " WHERE id = ?", (*(by_status.get(s, 0) for s in BROADCAST_STATUSES), broadcast_id))
        return len(rows)

    async def purge(self, before: float, limit: int = 500) -> int:
        """Delete expanded (or cancelled) broadcasts created before `before` whose rows are all gone; returns how
        many. A scheduled one stays, however far ahead its time is."""
        return await self._db.execute(
            "DELETE FROM broadcasts WHERE id IN (SELECT b.id FROM broadcasts b WHERE b.created_at < ? "
            "AND b.state NOT IN ('expanding', 'scheduled') "
            "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.broadcast_id = b.id) LIMIT ?)",
            (before, limit),
        )
