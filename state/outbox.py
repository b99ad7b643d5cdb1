"""The durable outbox: one row per outgoing proactive message.

Enqueueing is a committed write; the delivery worker reads pending rows, sends them and records the
outcome. Outcomes are written in batches (`apply`), so a crash can re-send at most the rows that were
in flight or whose outcome was not yet flushed; see docs/architecture.md for the bound.

A broadcast's recipient row (`broadcast_id`) stores no payload and no category ('' for both): what is said is kept
once in its broadcast (state/broadcasts.py) and filled in when rows are read, from a small per-process cache.
"""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from state.clock import Clock

from .db import Connection, Database, Row, by_name, chunks, marks
from .outbox_counts import PENDING_CAP, TenantQueue, status_counts, tenant_queues
from .pending import PENDING_INDEXES

Status = Literal["pending", "held", "sent", "failed", "dropped", "expired", "cancelled", "superseded", "merged"]
PRIORITIES = {"normal": 0, "urgent": 1}
REPLY_PRIORITY = 2  # a turn's reply that waits in the outbox: before every notification


@dataclass
class OutboxItem:
    """What a caller asks to send: to a conversation, to a user (alone: "open, or reuse, a 1:1 chat with
    this user"), or both: to a conversation, addressed to one person in it (their alert, their result; in a
    group chat or channel only that person's open topic holds it)."""

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
    broadcast_id: int | None = None  # the broadcast (POST /api/notify) it is one recipient of; payload there
    undecided: bool = False  # the engagement policy decides when the row is about to go (a broadcast's)

    def as_row(self, row_id: int, now: float) -> OutboxRow:
        """The row this item became (saves reading it back)."""
        return OutboxRow(
            id=row_id, conversation_id=self.conversation_id, target_user_id=self.target_user_id,
            tenant_id=self.tenant_id, kind=self.kind, update_of=self.update_of, payload=self.payload,
            category=self.category, subject=self.subject, priority=self.priority, status=self.status,
            not_before=self.not_before if self.not_before is not None else now, expires_at=self.expires_at,
            attempts=0, last_error=self.note, activity_id=None, dedup_key=self.dedup_key, created_at=now,
            broadcast_id=self.broadcast_id, undecided=self.undecided,
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
    batch_id: str | None = None  # the broadcast's public id (filled in when read)
    broadcast_id: int | None = None
    undecided: bool = False

    @classmethod
    def from_row(cls, row: Row) -> OutboxRow:
        """The row as stored; a broadcast row's payload is empty until `OutboxStore` fills it in."""
        return cls(
            id=row["id"],
            conversation_id=row["conversation_id"],
            target_user_id=row["target_user_id"],
            tenant_id=row["tenant_id"],
            kind=row["kind"],
            update_of=row["update_of"],
            payload=json.loads(row["payload"]) if row["payload"] else {},
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
            broadcast_id=row["broadcast_id"],
            undecided=bool(row["undecided"]),
        )

    def public(self) -> dict[str, Any]:
        """The view `GET /api/notify/{id}` returns."""
        return {
            "id": self.id,
            "batchId": self.batch_id,
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
OUTBOX_CHANNEL = "bot_outbox"
"""Notifications of rows waiting to be claimed; the payload is the tenant ('' for none)."""
Writes = Callable[[Connection], Awaitable[None]]
"""Statements to run inside another store's transaction (a unit of work across stores)."""
_INSERT = (
    "INSERT INTO outbox (dedup_key, conversation_id, target_user_id, tenant_id, kind, update_of, payload, category, "
    "subject, priority, status, not_before, expires_at, created_at, updated_at, last_error, broadcast_id, undecided)"
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SET_OUTCOME = (
    "UPDATE outbox SET status = ?, attempts = COALESCE(?, attempts), last_error = COALESCE(?, last_error), "
    "activity_id = COALESCE(?, activity_id), not_before = COALESCE(?, not_before), sent_at = COALESCE(?, sent_at), "
    "updated_at = ?, claimed_by = CASE WHEN ? = 'pending' THEN claimed_by END, "
    "claimed_until = CASE WHEN ? = 'pending' THEN claimed_until END"
)
_OUTCOME = f"{_SET_OUTCOME} WHERE id = ?"
_RETARGETED_OUTCOME = f"{_SET_OUTCOME}, conversation_id = ? WHERE id = ?"
_UNCLAIMED = "(claimed_by IS NULL OR claimed_until < ?)"
_NO_TENANT = "(tenant_id IS NULL OR tenant_id = '')"
_BATCH = 500  # rows per INSERT: 9,000 parameters, within both engines' limits
_PAYLOADS_CACHED = 64  # broadcasts whose payload this process keeps parsed


class OutboxStore:
    """Rows of the outbox table."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._broadcasts: OrderedDict[int, tuple[dict[str, Any], str, str]] = OrderedDict()
        """Broadcast id → (payload, public id, category): what its recipient rows leave out."""

    async def _rows(self, rows: Iterable[Row]) -> list[OutboxRow]:
        """Rows as read, broadcast rows with their broadcast's payload (shared, read-only), category and public
        id."""
        out = [OutboxRow.from_row(r) for r in by_name(list(rows))]
        await self._know({r.broadcast_id for r in out if r.broadcast_id is not None})
        for row in out:
            if row.broadcast_id is not None and (known := self._broadcasts.get(row.broadcast_id)) is not None:
                self._broadcasts.move_to_end(row.broadcast_id)
                if not row.payload:
                    row.payload = known[0]
                if not row.category:
                    row.category = known[2]
                row.batch_id = known[1]
        self._forget()
        return out

    async def _know(self, broadcast_ids: Iterable[int]) -> None:
        """Read the broadcasts not cached yet."""
        wanted = set(broadcast_ids) - self._broadcasts.keys()
        for chunk in chunks(sorted(wanted)):
            for b in await self._db.fetchall(
                    f"SELECT id, public_id, payload, category FROM broadcasts WHERE id IN ({marks(len(chunk))})",
                    chunk):
                self._broadcasts[int(b["id"])] = (json.loads(b["payload"]) if b["payload"] else {}, b["public_id"],
                                                  str(b["category"]))

    def _forget(self) -> None:
        while len(self._broadcasts) > _PAYLOADS_CACHED:
            self._broadcasts.popitem(last=False)

    async def enqueue(self, items: Sequence[OutboxItem], *, reason: str | None = None,
                      also: Writes | None = None) -> list[Enqueued]:
        """Insert items in one transaction; an item whose dedup key exists returns the existing id.

        Rows go in as multi-row `INSERT … ON CONFLICT (dedup_key) … DO NOTHING RETURNING` statements (one per
        `_BATCH` items), so a fan-out costs a few round trips, not one per target. `reason` is kept as the
        rows' note (e.g. why a notification was dropped). `also` writes what must commit with the rows (e.g.
        "this watch has alerted") in the same transaction: both happen, or neither."""
        async with self._db.transaction() as tx:
            if also is not None:
                await also(tx)
            return await self.insert(tx, items, reason)

    async def insert(self, tx: Connection, items: Sequence[OutboxItem], reason: str | None = None) -> list[Enqueued]:
        """`enqueue` on the caller's transaction."""
        now = self._clock.now().timestamp()
        results: list[Enqueued] = []
        for batch in chunks(list(items), _BATCH):
            params: list[Any] = []
            for item in batch:
                params += (
                    item.dedup_key, item.conversation_id, item.target_user_id, item.tenant_id, item.kind,
                    item.update_of,
                    "" if item.broadcast_id is not None else json.dumps(item.payload, separators=(",", ":")),
                    "" if item.broadcast_id is not None else item.category, item.subject, item.priority, item.status,
                    item.not_before if item.not_before is not None else now, item.expires_at, now, now,
                    item.note or (reason if item.status == "dropped" else None), item.broadcast_id,
                    1 if item.undecided else None,
                )
            inserted = await tx.fetchall(
                f"{_INSERT} VALUES {', '.join([_ROW] * len(batch))} "
                "ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING RETURNING id, dedup_key", params)
            results += await self._match(tx, batch, inserted)
        return results

    async def release_held(
        self, rows: Sequence[OutboxRow], digests: Callable[[list[OutboxRow]], list[OutboxItem] | None]
    ) -> tuple[list[OutboxRow], list[OutboxRow]]:
        """Take held rows for sending, atomically: of two releases racing (a topic's end and the hold-max job, on
        any process) each row goes to exactly one, so no digest is sent twice.

        `digests(taken)` says how the rows taken go out: None, each as it was (they become pending); otherwise
        the digest messages to queue instead (the taken rows become `merged` into the first). Returns (the rows
        taken, now pending, or merged) and the digest rows queued."""
        if not rows:
            return [], []
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            won: set[int] = set()
            for chunk in chunks([r.id for r in rows]):
                taken_rows = await tx.fetchall(
                    f"UPDATE outbox SET status = 'merged', updated_at = ? WHERE id IN ({marks(len(chunk))}) "
                    "AND status = 'held' RETURNING id", [now, *chunk])
                won.update(int(r["id"]) for r in taken_rows)
            taken = [r for r in rows if r.id in won]
            if not taken:
                return [], []
            items = digests(taken)
            if items is None:
                for chunk in chunks([r.id for r in taken]):
                    await tx.execute(f"UPDATE outbox SET status = 'pending' WHERE id IN ({marks(len(chunk))})", chunk)
                for row in taken:
                    row.status = "pending"
                return taken, []
            queued = await self.insert(tx, items)
            note = f"delivered in digest {queued[0].id}"
            for chunk in chunks([r.id for r in taken]):
                await tx.execute(f"UPDATE outbox SET last_error = ? WHERE id IN ({marks(len(chunk))})", [note, *chunk])
            digest_rows = [OutboxRow.from_row(r) for r in await tx.fetchall(  # digests belong to no broadcast
                f"{_SELECT} WHERE id IN ({marks(len(queued))}) ORDER BY id", [q.id for q in queued])]
        for row in taken:
            row.status = "merged"
        return taken, digest_rows

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
        return (await self._rows([row]))[0] if row else None

    async def get_many(self, ids: Iterable[int]) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        for chunk in chunks(list(ids)):
            found = await self._db.fetchall(f"{_SELECT} WHERE id IN ({marks(len(chunk))})", chunk)
            rows += await self._rows(found)
        return rows

    # -- claims: which replica sends which row (see state/leases.py) ---------------------------------------

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """`callback(tenant)` when any process announces rows of that tenant waiting to be claimed."""
        self._db.subscribe(OUTBOX_CHANNEL, callback)

    async def announce(self, tenant: str) -> None:
        """Tell the replicas that rows of `tenant` wait to be claimed (its owner claims them)."""
        await self._db.notify(OUTBOX_CHANNEL, tenant)

    async def tenants_with_work(self, now: float) -> set[str]:
        """Tenants ('' for none) with pending rows nobody holds a live claim on.

        A skip scan over each index of pending rows (state/pending.py): one seek per tenant, however many rows
        wait (a broadcast to a million people leaves a million pending rows)."""
        tenants: set[str] = set()
        for index in PENDING_INDEXES:
            rows = await self._db.fetchall(
                f"{index.tenants}SELECT tenant FROM t WHERE tenant IS NOT NULL AND EXISTS (SELECT 1 FROM outbox o "
                f"WHERE {index.where} AND o.tenant_id = t.tenant AND {_UNCLAIMED})",
                (now,),
            )
            tenants.update(str(r["tenant"]) for r in rows)
            if await self._db.fetchone(
                    f"SELECT 1 AS x FROM outbox WHERE {index.where} AND tenant_id IS NULL AND {_UNCLAIMED} LIMIT 1",
                    (now,)):
                tenants.add("")
        return tenants

    async def claim(self, tenants: Sequence[str], owner: str, until: float, now: float,
                    limit: int = 1000) -> list[OutboxRow]:
        """Claim pending rows of `tenants` that nobody holds (or whose claim expired), about `limit` in all,
        shared between the tenants (each is sent within its own budget); returns them. A tenant's rows outside
        broadcasts come first, oldest first, then its broadcasts' rows, older broadcasts first (state/pending.py).
        A claimed row is sent by its claimer only. Two index seeks per tenant: the cost does not grow with the
        rows waiting.

        On PostgreSQL one statement takes every tenant's share (a LATERAL join over the tenants: planned once,
        where a hundred tenants' shares spelled out cost 20 ms to plan, as much as running them); SQLite, which
        has no LATERAL, gets them spelled out, a hundred tenants a statement."""
        if not tenants:
            return []
        per = max(1, -(-limit // len(tenants)))
        statements: list[list[tuple[str, list[object]]]] = []  # each: the tenants' shares, SQL and parameters
        if self._db.engine == "postgresql":
            named = [t for t in tenants if t]
            shares: list[tuple[str, list[object]]] = []
            if named:
                each, params = self._share("tenant_id = t.tenant", [], "_each", now, per)
                shares.append((f"SELECT x.id FROM unnest(?::text[]) AS t(tenant) CROSS JOIN LATERAL ({each}) AS x",
                               [named, *params]))
            if len(named) < len(tenants):
                shares.append(self._share(_NO_TENANT, [], "_none", now, per))
            statements.append(shares)
        else:
            statements += [[self._share("tenant_id = ?" if tenant else _NO_TENANT, [tenant] if tenant else [], str(n),
                                        now, per) for n, tenant in enumerate(group)]
                           for group in chunks(list(tenants), 100)]
        claimed: list[OutboxRow] = []
        for shares in statements:
            arms, params = [sql for sql, _ in shares], [p for _, share in shares for p in share]
            # The picks are made once (MATERIALIZED): as `WHERE id IN (subquery)`, PostgreSQL may run the
            # subquery again per row it updates, and each run past the rows already claimed took more, beyond
            # the LIMIT (a 4-row claim took 12 in one suite run).
            rows = await self._db.fetchall(
                f"WITH picked AS MATERIALIZED ({' UNION ALL '.join(arms)}) "
                "UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE id IN (SELECT id FROM picked) "
                "RETURNING *", (*params, owner, until))
            claimed += await self._rows(rows)
        return sorted(claimed, key=lambda r: r.id)

    def _share(self, who: str, who_params: list[object], alias: str, now: float,
               per: int) -> tuple[str, list[object]]:
        """One tenant's share of a claim (`who`, with its parameters: which tenant) and its parameters: the
        tenant's rows outside broadcasts first, then its broadcasts', at most `per` in all."""
        lock = f" {self._db.row_lock}" if self._db.row_lock else ""
        picks = [f"SELECT id FROM (SELECT id FROM outbox WHERE {index.where} AND {who} AND {_UNCLAIMED} "
                 f"ORDER BY {index.order} LIMIT ?{lock}) AS {index.order[0]}{alias}" for index in PENDING_INDEXES]
        params = [p for _ in PENDING_INDEXES for p in (*who_params, now, per)]
        return f"SELECT id FROM ({' UNION ALL '.join(picks)} LIMIT ?) AS a{alias}", [*params, per]

    async def claim_ids(self, ids: Sequence[int], owner: str, until: float, now: float) -> list[OutboxRow]:
        """Claim these rows (just queued or released here) if they are pending and nobody holds them."""
        claimed: list[OutboxRow] = []
        for chunk in chunks(list(ids)):
            rows = await self._db.fetchall(
                f"UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE id IN ({marks(len(chunk))}) "
                "AND status = 'pending' AND (claimed_by IS NULL OR claimed_until < ? OR claimed_by = ?) RETURNING *",
                (owner, until, *chunk, now, owner),
            )
            claimed += await self._rows(rows)
        return sorted(claimed, key=lambda r: r.id)

    async def renew_claims(self, owner: str, until: float, ids: Sequence[int]) -> int:
        """Heartbeat: `owner` still holds these pending rows (those it queued, sends or has an unwritten
        outcome of). By id, not by owner: no index on `claimed_by`, so a claim stays a HOT update; a row the
        owner no longer holds keeps its claim until it expires."""
        changed = 0
        for chunk in chunks(list(ids)):
            changed += await self._db.execute(
                f"UPDATE outbox SET claimed_until = ? WHERE id IN ({marks(len(chunk))}) AND claimed_by = ? "
                "AND status = 'pending'", (until, *chunk, owner))
        return changed

    async def unclaim(self, owner: str, ids: Sequence[int]) -> int:
        """Hand these of `owner`'s pending rows back, e.g. on a clean stop or a tenant handover."""
        changed = 0
        for chunk in chunks(list(ids)):
            changed += await self._db.execute(
                f"UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE id IN ({marks(len(chunk))}) "
                "AND claimed_by = ? AND status = 'pending'",
                (*chunk, owner),
            )
        return changed

    async def recent_sends(self, tenant: str, since: float) -> list[tuple[str | None, float]]:
        """(conversation id, sent at) of the tenant's rows sent since `since`, oldest first: the send history a
        replica taking the tenant over starts its rate windows from."""
        # tenant_id compared as stored (NULL for ''), so the (tenant_id, sent_at) index finds the range. A
        # broadcast's rows are not in that index (bytes per recipient): its one message per conversation is
        # left out of the history (it fills no per-conversation window alone; see docs/architecture.md)
        where = "tenant_id = ?" if tenant else "(tenant_id IS NULL OR tenant_id = '')"
        rows = await self._db.fetchall(
            f"SELECT conversation_id, sent_at FROM outbox WHERE {where} AND sent_at >= ? AND broadcast_id IS NULL "
            "ORDER BY sent_at",
            (tenant, since) if tenant else (since,),
        )
        return [(r["conversation_id"], float(r["sent_at"])) for r in rows]

    async def pending(self) -> list[OutboxRow]:
        """Every row the worker should (eventually) send, oldest first."""
        rows = await self._db.fetchall(f"{_SELECT} WHERE status = 'pending' ORDER BY id")
        return await self._rows(rows)

    async def held(self, conversation_id: str | None = None, *, user_id: str | None = None) -> list[OutboxRow]:
        """Held rows, oldest first: all, a conversation's, or those addressed to one user in a conversation."""
        if conversation_id is None:
            rows = await self._db.fetchall(f"{_SELECT} WHERE status = 'held' ORDER BY id")
        elif user_id is None:
            rows = await self._db.fetchall(
                f"{_SELECT} WHERE status = 'held' AND conversation_id = ? ORDER BY id", (conversation_id,)
            )
        else:
            rows = await self._db.fetchall(
                f"{_SELECT} WHERE status = 'held' AND conversation_id = ? AND target_user_id = ? ORDER BY id",
                (conversation_id, user_id),
            )
        return await self._rows(rows)

    async def apply(self, outcomes: Sequence[Outcome]) -> None:
        """Record delivery outcomes in one transaction, in order.

        `conversation_id` is only assigned by the outcomes that carry one (a chat just opened): an UPDATE that
        leaves an index's columns out of its SET lets PostgreSQL delete that index's entries for the row's
        dead versions when a page fills (bottom-up deletion), so the conversation index does not grow by
        an entry per send (see docs/architecture.md, "Bytes per recipient")."""
        if not outcomes:
            return
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            for retargets, run in itertools.groupby(outcomes, key=lambda o: o.conversation_id is not None):
                await tx.executemany(
                    _RETARGETED_OUTCOME if retargets else _OUTCOME,
                    [(o.status, o.attempts, o.last_error, o.activity_id, o.not_before, o.sent_at, now, o.status,
                      o.status, *((o.conversation_id,) if retargets else ()), o.id) for o in run],
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

    async def supersede(self, conversation_id: str, subject: str, *, keep: int, user_id: str | None = None) -> int:
        """Older held rows about `subject` in a conversation, addressed to the same user (or to nobody),
        give way to row `keep`; returns how many."""
        return await self._db.execute(
            "UPDATE outbox SET status = 'superseded', last_error = ?, updated_at = ? "
            "WHERE conversation_id = ? AND subject = ? AND COALESCE(target_user_id, '') = ? AND status = 'held' "
            "AND id != ?",
            (f"superseded by {keep}", self._clock.now().timestamp(), conversation_id, subject, user_id or "", keep),
        )

    async def cancel_conversation(self, conversation_id: str, reason: str) -> dict[int, str]:
        """Cancel every pending or held row of a conversation; returns their ids and categories."""
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE outbox SET status = 'cancelled', last_error = ?, updated_at = ? "
                "WHERE conversation_id = ? AND status IN ('pending', 'held') RETURNING id, category, broadcast_id",
                (reason, now, conversation_id),
            )
        await self._know(int(r["broadcast_id"]) for r in rows if not r["category"] and r["broadcast_id"] is not None)
        categories: dict[int, str] = {}
        for r in rows:  # a broadcast's row leaves its category to the broadcast
            known = self._broadcasts.get(int(r["broadcast_id"])) if r["broadcast_id"] is not None else None
            categories[int(r["id"])] = str(r["category"]) or (known[2] if known else "notification")
        self._forget()
        return categories

    async def counts(self) -> dict[str, int]:
        """Rows per status, without reading a broadcast's rows (state/outbox_counts.py)."""
        return await status_counts(self._db)

    async def purge(self, before: float, limit: int = 500) -> int:
        """Delete up to `limit` finished rows last changed before `before` (retention); returns how many.
        A broadcast's rows go with their broadcast instead (BroadcastStore.purge_rows).

        Kept: rows another row still updates (a progress message and its updates go newest first) and the
        acknowledgement of a running analysis. Call again until it returns less than `limit`."""
        return await self._db.execute(
            "DELETE FROM outbox WHERE id IN (SELECT o.id FROM outbox o WHERE o.status IN "
            "('sent', 'failed', 'cancelled', 'dropped', 'expired', 'superseded', 'merged') AND o.broadcast_id IS NULL "
            "AND o.updated_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM outbox r WHERE r.update_of = o.id) "
            "AND NOT EXISTS (SELECT 1 FROM analyses a WHERE a.progress_row = o.id AND a.status = 'running') "
            "ORDER BY o.updated_at LIMIT ?)",
            (before, limit),
        )

    async def tenant_queues(self, cap: int = PENDING_CAP) -> list[TenantQueue]:
        """Each tenant's pending rows counted up to `cap`, and its first-queued row's time: the queue gauges
        (bounded work: state/outbox_counts.py)."""
        return await tenant_queues(self._db, cap)

    async def settle_undecided(self, held: Sequence[tuple[int, str | None, float | None]],
                               dropped: Sequence[tuple[int, str]]) -> None:
        """The policy's answer for broadcast rows about to go that may not go now: `held` (id, reason or None,
        release time or None) wait, unclaimed; `dropped` (id, reason) never go. Rows the policy let through
        stay as they are (a crash before they are sent asks the policy again)."""
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            if held:
                await tx.executemany(
                    "UPDATE outbox SET status = 'held', undecided = NULL, claimed_by = NULL, claimed_until = NULL, "
                    "last_error = COALESCE(?, last_error), not_before = COALESCE(?, not_before), updated_at = ? "
                    "WHERE id = ? AND status = 'pending'",
                    [(note, until, now, row_id) for row_id, note, until in held])
            if dropped:
                await tx.executemany(
                    "UPDATE outbox SET status = 'dropped', undecided = NULL, claimed_by = NULL, "
                    "claimed_until = NULL, last_error = ?, updated_at = ? WHERE id = ? AND status = 'pending'",
                    [(note, now, row_id) for row_id, note in dropped])
