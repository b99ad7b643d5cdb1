"""Fair limits, race-free across replicas: count, then write, while holding the subject's lock row.

`lock(conn, subject)` is an upsert of the subject's row in `quota_locks` inside the caller's transaction. On
PostgreSQL the upsert takes that row's lock until the transaction ends, so a second transaction for the same
subject (another turn, another replica) waits there, and its count, a new statement under READ COMMITTED, then
sees the first one's rows. On SQLite every write transaction is `BEGIN IMMEDIATE`, serialised anyway. The rows
themselves are counted (no counter to drift); locks are taken in one order (user, then tenant), so two
transactions never wait for each other in a circle.
"""

from __future__ import annotations

from .db import Connection


async def lock(conn: Connection, subject: str, now: float) -> None:
    """Hold `subject`'s lock row until `conn`'s transaction ends."""
    await conn.execute(
        "INSERT INTO quota_locks (subject, touched_at) VALUES (?, ?) "
        "ON CONFLICT (subject) DO UPDATE SET touched_at = excluded.touched_at", (subject, now))


def user_lock(user_id: str) -> str:
    return f"user:{user_id}"


def tenant_lock(tenant_id: str) -> str:
    return f"tenant:{tenant_id}"
