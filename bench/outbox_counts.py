"""What one /metrics scrape, one /healthz?detail=1 and one batch status cost in the database after a notice to N
people: the counting statements before (a scan of every row) and now (state/outbox_counts.py), on one engine.

    python bench/outbox_counts.py [--engine sqlite|postgresql] [--recipients 1000000] [--tenants 200]
                                  [--postgres-url postgresql://user@host/db]

Seeds a fresh database with one broadcast of N pending recipient rows across `--tenants` tenants (the moment
right after its expansion: every row still pending, the worst case for per-tenant queues) and 45 single rows in
every status, then times each reading (median of 7, after one warm-up) on one connection. On SQLite that
connection is the bot's only one: people chatting with the bot wait while it is held.

The last line is JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, Databases

sys.path.insert(0, str(ROOT))
from state.broadcasts import BroadcastStore
from state.clock import SystemClock
from state.db import Database, connect
from state.migrations import BROADCAST_STATUSES
from state.notices import NoticeControl
from state.outbox import OutboxItem, OutboxStore

RUNS = 7
# what the bot ran before (each read every row): /metrics and /healthz?detail=1's status counts, /metrics' tenant
# queues, and a batch status's estimated finish
BEFORE = {
    "by status": "SELECT status, COUNT(*) AS n FROM outbox GROUP BY status",
    "tenant queues": "SELECT tenant_id, COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE status = 'pending' "
                     "GROUP BY tenant_id",
    "a notice's finish": "SELECT tenant_id, COUNT(*) AS n FROM outbox WHERE broadcast_id = 1 AND status = 'pending' "
                         "GROUP BY tenant_id",
}


async def seed(db: Database, engine: str, recipients: int, tenants: int) -> None:
    clock = SystemClock()
    outbox = OutboxStore(db, clock)
    broadcasts = BroadcastStore(db, outbox, clock)
    broadcast = await broadcasts.create("b" * 32, {"all": True}, {"type": "message", "text": "x"})
    assert broadcast == 1
    for n, status in enumerate(BROADCAST_STATUSES):
        made = await outbox.enqueue([OutboxItem({"type": "message", "text": status}, conversation_id=f"c-{status}-{i}",
                                                tenant_id=f"tenant-{i:03d}") for i in range(n + 1)])
        if status != "pending":
            await outbox.set_status([m.id for m in made], status)
    now = clock.now().timestamp()
    numbers = ("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) SELECT i FROM s"
               if engine == "sqlite" else "SELECT generate_series(1, ?::int) AS i")
    for start in range(0, recipients, 100_000):  # the expansion's INSERT … SELECT, in pages of 100,000
        size = min(100_000, recipients - start)
        await db.execute(
            "INSERT INTO outbox (conversation_id, tenant_id, kind, payload, category, priority, status, not_before, "
            "created_at, updated_at, broadcast_id, undecided) "
            f"SELECT 'a:c-' || CAST(i + ? AS TEXT), 'tenant-' || CAST((i + ?) % ? AS TEXT), 'send', '', "
            f"'', 0, 'pending', ?, ?, ?, 1, 1 FROM ({numbers}) s",
            (start, start, tenants, now, now, now, size))
    if engine == "postgresql":
        await db.execute("VACUUM ANALYZE outbox")  # as autovacuum would soon after


async def timed(read: Callable[[], Awaitable[Any]]) -> float:
    await read()
    runs = []
    for _ in range(RUNS):
        started = time.perf_counter()
        await read()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs) * 1000


async def measure(db: Database) -> dict[str, dict[str, float]]:
    clock = SystemClock()
    outbox, control = OutboxStore(db, clock), NoticeControl(db, clock)
    now: dict[str, Callable[[], Awaitable[Any]]] = {
        "by status": outbox.counts, "tenant queues": outbox.tenant_queues, "a notice's finish": control.busiest_queue}
    figures: dict[str, dict[str, float]] = {}
    for name, sql in BEFORE.items():
        figures[name] = {"before_ms": await timed(lambda sql=sql: db.fetchall(sql)),  # type: ignore[misc]
                         "now_ms": await timed(now[name])}
    return figures


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-counts-") as tmp:
        databases = Databases(Path(tmp), args.postgres_url)
        try:
            url = databases.url(args.engine, "counts")
            if url is None:
                raise SystemExit(f"no PostgreSQL: {databases.missing}")
            db = connect(url)
            await db.open()
            try:
                seeded = time.monotonic()
                await seed(db, args.engine, args.recipients, args.tenants)
                seed_s = time.monotonic() - seeded
                figures = await measure(db)
            finally:
                await db.close()
        finally:
            databases.close()
    print(f"counting the outbox after a notice to {args.recipients} people across {args.tenants} tenants on "
          f"{args.engine} (seeded in {seed_s:.0f} s), {os.cpu_count()} cores, load average "
          f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}; median of {RUNS}")
    print(f"{'reading':<22}{'before, ms':>14}{'now, ms':>12}")
    for name, row in figures.items():
        print(f"{name:<22}{row['before_ms']:>14.1f}{row['now_ms']:>12.2f}")
    scrape_before = figures["by status"]["before_ms"] + figures["tenant queues"]["before_ms"]
    scrape_now = figures["by status"]["now_ms"] + figures["tenant queues"]["now_ms"]
    print(f"{'one /metrics scrape':<22}{scrape_before:>14.1f}{scrape_now:>12.2f}")
    return {"recipients": args.recipients, "tenants": args.tenants, "engine": args.engine,
            "scrape_before_ms": round(scrape_before, 1), "scrape_now_ms": round(scrape_now, 2),
            **{f"{name.replace(' ', '_').replace(chr(39), '')}_{k}": round(v, 2)
               for name, row in figures.items() for k, v in row.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--postgres-url", default=None)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(drive(args))))


if __name__ == "__main__":
    main()
