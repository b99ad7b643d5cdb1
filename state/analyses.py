"""Analyses, persisted: who asked to analyse what, where to answer, and how far it got."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from state.clock import Clock

from .db import Connection, Database, Row
from .model import product_key
from .quotas import lock, tenant_lock, user_lock

Refusal = Literal["same product", "user", "tenant"]


@dataclass(frozen=True)
class AnalysisRow:
    id: str
    user_id: str
    conversation_id: str
    tenant_id: str | None
    product: str
    status: str
    started_at: float
    due_at: float
    progress_row: int | None

    @classmethod
    def from_row(cls, row: Row) -> AnalysisRow:
        return cls(row["id"], row["user_id"], row["conversation_id"], row["tenant_id"], row["product"],
                   row["status"], row["started_at"], row["due_at"], row["progress_row"])


class AnalysisStore:
    """Rows of the `analyses` table."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def is_running(self, user_id: str, product: str) -> bool:
        row = await self._db.fetchone(
            "SELECT id FROM analyses WHERE user_id = ? AND product_key = ? AND status = 'running'",
            (user_id, product_key(product)),
        )
        return row is not None

    async def admit(self, conn: Connection, user_id: str, tenant_id: str | None, product: str, *,
                    per_user: int, per_tenant: int) -> Refusal | None:
        """Inside the transaction that inserts the analysis: why it may not start (this product already runs for
        the user; the user or the tenant has its most running), or None. Race-free across replicas (see
        `state/quotas.py`): the user's and the tenant's lock rows are held until `conn` commits."""
        now = self._clock.now().timestamp()
        await lock(conn, user_lock(user_id), now)
        if tenant_id is not None:
            await lock(conn, tenant_lock(tenant_id), now)
        mine = await conn.fetchall(
            "SELECT product_key FROM analyses WHERE user_id = ? AND status = 'running'", (user_id,))
        if any(r["product_key"] == product_key(product) for r in mine):
            return "same product"
        if len(mine) >= per_user:
            return "user"
        if tenant_id is not None:
            row = await conn.fetchone(
                "SELECT COUNT(*) AS n FROM analyses WHERE tenant_id = ? AND status = 'running'", (tenant_id,))
            if row is not None and int(row["n"]) >= per_tenant:
                return "tenant"
        return None

    async def purge(self, before: float, limit: int = 500) -> int:
        """Delete up to `limit` finished analyses last changed before `before` (retention); returns how many."""
        return await self._db.execute(
            "DELETE FROM analyses WHERE id IN (SELECT id FROM analyses WHERE status != 'running' AND updated_at < ? "
            "ORDER BY updated_at LIMIT ?)", (before, limit))

    async def purge_locks(self, before: float, limit: int = 500) -> int:
        """Delete up to `limit` quota lock rows untouched since `before` (retention)."""
        return await self._db.execute(
            "DELETE FROM quota_locks WHERE subject IN (SELECT subject FROM quota_locks WHERE touched_at < ? "
            "ORDER BY touched_at LIMIT ?)", (before, limit))

    async def insert(self, analysis_id: str, user_id: str, conversation_id: str, tenant_id: str | None,
                     product: str, due_at: float, conn: Connection | None = None) -> None:
        """A new running analysis; on `conn` to commit with its jobs and acknowledgement."""
        now = self._clock.now().timestamp()
        await (conn or self._db).execute(
            "INSERT INTO analyses (id, user_id, conversation_id, tenant_id, product, product_key, status, started_at, "
            "due_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
            (analysis_id, user_id, conversation_id, tenant_id, product.strip(), product_key(product), now, due_at,
             now),
        )

    async def running(self, user_id: str, product: str | None = None) -> list[AnalysisRow]:
        """The user's running analyses (of `product` only, when given), oldest first."""
        if product is None:
            rows = await self._db.fetchall(
                "SELECT * FROM analyses WHERE user_id = ? AND status = 'running' ORDER BY started_at, id", (user_id,))
        else:
            rows = await self._db.fetchall(
                "SELECT * FROM analyses WHERE user_id = ? AND product_key = ? AND status = 'running' "
                "ORDER BY started_at, id", (user_id, product_key(product)))
        return [AnalysisRow.from_row(r) for r in rows]

    async def get(self, analysis_id: str) -> AnalysisRow | None:
        row = await self._db.fetchone("SELECT * FROM analyses WHERE id = ?", (analysis_id,))
        return AnalysisRow.from_row(row) if row else None

    async def set_progress_row(self, analysis_id: str, outbox_id: int) -> None:
        await self._db.execute("UPDATE analyses SET progress_row = ? WHERE id = ?", (outbox_id, analysis_id))

    async def set_status(self, analysis_id: str, status: str) -> None:
        await self._db.execute("UPDATE analyses SET status = ?, updated_at = ? WHERE id = ?",
                               (status, self._clock.now().timestamp(), analysis_id))
