"""The outbox counted in bounded work: what /metrics, /healthz?detail=1 and a notice's estimated finish read.

A broadcast to a million people leaves a million outbox rows; a count that reads them all holds SQLite's one
connection for seconds at every scrape. Neither reading here grows with a broadcast's recipients:

- **By status**: the rows outside broadcasts are counted through their own partial index (`outbox_single_status`,
  migration 21; they are few, bounded by retention), and a broadcast's rows by its `n_<status>` counters
  (kept by triggers as rows are written and change, migration 14; retention lowers them as it deletes rows).
- **Tenant queues**: a skip scan over each index of pending rows (state/pending.py: one seek per tenant with
  pending rows, as the claims use them) counting each tenant's pending rows up to `PENDING_CAP`, with its
  first-queued row's time. At most tenants x 2 x `PENDING_CAP` index entries, however many recipients wait.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .db import Database
from .migrations import BROADCAST_STATUSES
from .pending import PENDING_INDEXES, PendingIndex

PENDING_CAP = 1000
"""A tenant's pending rows are counted up to this many (a tenant with more shows this many)."""

_SUMS = ", ".join(f"COALESCE(SUM(n_{s}), 0) AS n_{s}" for s in BROADCAST_STATUSES)


def _tenants(index: PendingIndex) -> str:
    """Each tenant's rows in `index`, counted up to a cap, with the first one's time.

    `ORDER BY tenant_id, <order>`, the index's order, with the tenant as a range (`=` would make PostgreSQL
    drop tenant_id from the order and walk the primary key or the table, reading every other tenant's rows on
    the way to `cap` of this one's): only that index gives the order, so it is the plan."""
    this = (f"{index.where} AND o.tenant_id >= t.tenant AND o.tenant_id <= t.tenant "
            f"ORDER BY o.tenant_id, o.{index.order}")
    return (
        f"{index.tenants}SELECT t.tenant AS tenant_id, "
        f"(SELECT COUNT(*) FROM (SELECT 1 AS x FROM outbox o WHERE {this} LIMIT ?) c) AS n, "
        f"(SELECT o.created_at FROM outbox o WHERE {this} LIMIT 1) AS oldest FROM t WHERE t.tenant IS NOT NULL"
    )


def _no_tenant(index: PendingIndex) -> str:
    this = f"{index.where} AND tenant_id IS NULL ORDER BY tenant_id, {index.order}"
    return (f"SELECT (SELECT COUNT(*) FROM (SELECT 1 AS x FROM outbox WHERE {this} LIMIT ?) c) AS n, "
            f"(SELECT created_at FROM outbox WHERE {this} LIMIT 1) AS oldest")


@dataclass(frozen=True)
class TenantQueue:
    """Pending outbox rows of one tenant (None: rows without a tenant): how many, counted up to the cap, and
    when its first-queued pending row was queued (epoch seconds)."""

    tenant_id: str | None
    pending: int
    oldest_created_at: float


async def status_counts(db: Database) -> dict[str, int]:
    """Outbox rows per status (statuses with none left out): the rows outside broadcasts counted through
    their index, plus every broadcast's counters."""
    counts: dict[str, int] = {}
    for row in await db.fetchall(
            "SELECT status, COUNT(*) AS n FROM outbox WHERE broadcast_id IS NULL GROUP BY status"):
        counts[str(row["status"])] = int(row["n"])
    sums = await db.fetchone(f"SELECT {_SUMS} FROM broadcasts")
    for status in BROADCAST_STATUSES:
        n = int(sums[f"n_{status}"]) if sums else 0
        if n:
            counts[status] = counts.get(status, 0) + n
    return counts


async def tenant_queues(db: Database, cap: int = PENDING_CAP) -> list[TenantQueue]:
    """Each tenant's pending rows, counted up to `cap`, and its first-queued row's time (a broadcast's rows: the
    first in its index's order); rows with no tenant ('' or none) as one queue with tenant None. Per index of
    pending rows, one index seek per tenant plus at most `cap` entries."""
    found: dict[str | None, list[tuple[int, float]]] = {}
    for index in PENDING_INDEXES:
        for r in await db.fetchall(_tenants(index), (cap,)):
            if r["oldest"] is not None:
                found.setdefault(str(r["tenant_id"]) or None, []).append((int(r["n"]), float(r["oldest"])))
        none = await db.fetchone(_no_tenant(index), (cap,))
        if none is not None and none["oldest"] is not None:
            found.setdefault(None, []).append((int(none["n"]), float(none["oldest"])))
    return [TenantQueue(tenant, min(cap, sum(n for n, _ in parts)), min(t for _, t in parts))
            for tenant, parts in found.items()]


def busiest_queue(queues: Iterable[TenantQueue], total_pending: int, cap: int = PENDING_CAP) -> float:
    """Pending rows in the busiest tenant's queue: exact when every queue is under `cap`; otherwise the rows
    beyond the counted ones (`total_pending` is exact) are taken as spread evenly over the tenants at the cap."""
    queues = list(queues)
    full = [q for q in queues if q.pending >= cap]
    below = max((q.pending for q in queues if q.pending < cap), default=0)
    if not full:
        return float(below)
    rest = total_pending - sum(q.pending for q in queues if q.pending < cap)
    return float(max(below, cap, rest / len(full)))
