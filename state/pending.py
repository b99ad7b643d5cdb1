"""Where the outbox's pending rows are found: two partial indexes, each led by the tenant (migration 23).

The claims, the replicas' "which tenants have work" and the queue gauges read a tenant's pending rows through
these, one seek per tenant, never through a broadcast's other rows:

- rows outside broadcasts: `outbox_claims (tenant_id, id)`, so a conversation's messages go in the order they
  were queued;
- a broadcast's rows: `outbox_broadcast_pending (tenant_id, broadcast_id)`, one key per tenant and broadcast
  (PostgreSQL keeps a key's rows as one posting list: about 6 bytes a recipient), older broadcasts first; within
  one broadcast, whose rows go to different conversations, in the index's order (id on SQLite, table order on
  PostgreSQL).

A statement meets an index's predicate by repeating its `where` word for word (SQLite uses a partial index only
then) and follows its order with `ORDER BY tenant_id, <order>`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PendingIndex:
    """One of the indexes of pending rows: its predicate and the column it orders a tenant's rows by."""

    where: str
    order: str

    @property
    def tenants(self) -> str:
        """`WITH RECURSIVE t(tenant)`: the tenants with rows in this index, by skip scan (one seek each)."""
        return (f"WITH RECURSIVE t(tenant) AS (SELECT MIN(tenant_id) FROM outbox WHERE {self.where} UNION ALL "
                f"SELECT (SELECT MIN(o.tenant_id) FROM outbox o WHERE {self.where} AND o.tenant_id > t.tenant) "
                "FROM t WHERE t.tenant IS NOT NULL) ")


SINGLE = PendingIndex("status = 'pending' AND broadcast_id IS NULL", "id")
BROADCAST = PendingIndex("status = 'pending' AND broadcast_id IS NOT NULL", "broadcast_id")
PENDING_INDEXES = (SINGLE, BROADCAST)
