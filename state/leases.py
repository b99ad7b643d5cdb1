"""Replicas and what each holds: heartbeats, tenant leases and turn leases (tables `replicas`,
`tenant_leases`, `turn_leases`).

A tenant's proactive messages are sent by one replica at a time, the holder of its lease; a conversation's
turns run on one replica at a time, the holder of its turn lease; see docs/architecture.md ("Several
replicas"). Every statement is a conditional write, so two replicas racing for one lease settle in the
database: exactly one holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .db import Database, chunks, marks

TURNS_CHANNEL = "bot_turns"
"""Where a replica says that a conversation's turn lease is free (payload: the conversation id)."""


@dataclass(frozen=True)
class Lease:
    tenant: str
    owner: str
    lease_until: float


class Leases:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- replicas ---------------------------------------------------------------------------------

    async def heartbeat(self, replica_id: str, now: float) -> None:
        await self._db.execute(
            "INSERT INTO replicas (id, started_at, seen_at) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
            (replica_id, now, now),
        )

    async def live(self, since: float) -> list[str]:
        """Replicas that sent a heartbeat at or after `since`, sorted."""
        rows = await self._db.fetchall("SELECT id FROM replicas WHERE seen_at >= ? ORDER BY id", (since,))
        return [str(r["id"]) for r in rows]

    async def leave(self, replica_id: str) -> None:
        """A replica stopping cleanly: the others rebalance at once instead of waiting for its heartbeat to age."""
        await self._db.execute("DELETE FROM replicas WHERE id = ?", (replica_id,))

    async def forget_replicas(self, before: float) -> int:
        """Drop replicas not seen since `before` (long gone)."""
        return await self._db.execute("DELETE FROM replicas WHERE seen_at < ?", (before,))

    # -- tenant leases ----------------------------------------------------------------------------

    async def acquire(self, tenant: str, owner: str, until: float, now: float) -> bool:
        """Take the tenant's lease if it is free, expired, or already `owner`'s; True if `owner` holds it now."""
        row = await self._db.fetchone(
            "INSERT INTO tenant_leases (tenant, owner, lease_until) VALUES (?, ?, ?) "
            "ON CONFLICT (tenant) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until "
            "WHERE tenant_leases.lease_until < ? OR tenant_leases.owner = excluded.owner RETURNING owner",
            (tenant, owner, until, now),
        )
        return row is not None

    async def renew(self, owner: str, tenants: Sequence[str], until: float) -> set[str]:
        """Extend `owner`'s leases on `tenants`; returns those it still holds."""
        held: set[str] = set()
        for chunk in chunks(list(tenants)):
            rows = await self._db.fetchall(
                f"UPDATE tenant_leases SET lease_until = ? WHERE owner = ? AND tenant IN ({marks(len(chunk))}) "
                "RETURNING tenant",
                (until, owner, *chunk),
            )
            held.update(str(r["tenant"]) for r in rows)
        return held

    async def release(self, owner: str, tenants: Iterable[str] | None = None) -> None:
        """Give up `owner`'s leases (all of them when `tenants` is None)."""
        if tenants is None:
            await self._db.execute("DELETE FROM tenant_leases WHERE owner = ?", (owner,))
            return
        for chunk in chunks(list(tenants)):
            await self._db.execute(
                f"DELETE FROM tenant_leases WHERE owner = ? AND tenant IN ({marks(len(chunk))})", (owner, *chunk)
            )

    async def all(self) -> list[Lease]:
        rows = await self._db.fetchall("SELECT tenant, owner, lease_until FROM tenant_leases ORDER BY tenant")
        return [Lease(str(r["tenant"]), str(r["owner"]), float(r["lease_until"])) for r in rows]


class TurnLeases:
    """One turn per conversation at a time across replicas (`turn_leases`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def take(self, conversation_id: str, owner: str, until: float, now: float) -> bool:
        """Hold the conversation's turn lease until `until` if it is free or expired; True if `owner` holds it."""
        row = await self._db.fetchone(
            "INSERT INTO turn_leases (conversation_id, owner, lease_until) VALUES (?, ?, ?) "
            "ON CONFLICT (conversation_id) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until "
            "WHERE turn_leases.lease_until < ? RETURNING owner",
            (conversation_id, owner, until, now),
        )
        return row is not None

    async def give_back(self, conversation_id: str, owner: str) -> None:
        """End `owner`'s turn lease and wake the replicas waiting for it."""
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM turn_leases WHERE conversation_id = ? AND owner = ?",
                             (conversation_id, owner))
            await self._db.notify(TURNS_CHANNEL, conversation_id, tx)

    def on_free(self, callback: Callable[[str], None]) -> None:
        """Call `callback(conversation_id)` when any replica gives a turn lease back ("*": maybe several)."""
        self._db.subscribe(TURNS_CHANNEL, callback)

