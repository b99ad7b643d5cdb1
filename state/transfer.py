"""Copy everything the bot knows from one database to another, e.g. from SQLite to PostgreSQL when one
machine is no longer enough:

    .venv/bin/python -m state.transfer sqlite:///data/bot.sqlite3 postgresql://bot:secret@db/pricewatch

Stop the bot first (a running bot keeps writing to the source). Both databases are migrated to this build's
schema; the target must hold no rows yet (the copy never merges). Every table is copied in key order, a
batch per transaction, with its ids, so the outbox's update links, watch ids in alert buttons and job keys
stay valid; identity columns then continue after the largest id. Not copied: replica heartbeats and
tenant/turn leases and quota lock rows (they describe running processes) and the schema version (each side has
its own).
A copy that stops half-way (e.g. the target went away) leaves part of the rows: empty the target, run again.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .db import Database, DatabaseUnavailable, DatabaseUrlError, Row, connect

BATCH = 1000


@dataclass(frozen=True)
class Table:
    name: str
    key: str  # the ORDER BY of the copy
    identity: bool = False  # `key` is a generated id: continued after the copy, and pages are read by it


TABLES: tuple[Table, ...] = (  # referenced tables first
    Table("bot_state", "key"),
    Table("conversation_refs", "conversation_id"),
    Table("conversation_members", "conversation_id, user_id"),
    Table("engagement", "conversation_id"),
    Table("engagement_members", "conversation_id, user_id"),
    Table("preferences", "subject"),
    Table("scheduled_jobs", "id"),
    Table("outbox", "id", identity=True),
    Table("broadcasts", "id", identity=True),  # after its rows: their insert trigger finds no broadcast to count in
    Table("watches", "id", identity=True),
    Table("price_observations", "id", identity=True),
    Table("analyses", "id"),
)


class TransferError(RuntimeError):
    """The copy cannot be made (the message says why); nothing was written."""


async def transfer(source: Database, target: Database) -> dict[str, int]:
    """Copy every table of `source` into the empty `target`; rows copied per table."""
    filled = [t.name for t in TABLES if await target.fetchone(f"SELECT 1 FROM {t.name} LIMIT 1")]
    if filled:
        raise TransferError(f"the target database already holds rows (in {', '.join(filled)}); it must be empty")
    copied: dict[str, int] = {}
    for table in TABLES:
        copied[table.name] = await _copy(source, target, table)
        if table.identity:
            await target.continue_ids(table.name, table.key)
    return copied


async def _copy(source: Database, target: Database, table: Table) -> int:
    count, last = 0, None
    while True:
        rows = await _page(source, table, count, last)
        if not rows:
            return count
        columns = list(rows[0].keys())
        async with target.transaction() as tx:
            await tx.executemany(
                f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                [tuple(row[c] for c in columns) for row in rows],
            )
        count += len(rows)
        last = rows[-1][table.key] if table.identity else None


async def _page(source: Database, table: Table, done: int, last: object) -> Sequence[Row]:
    if table.identity:  # big tables: by key, so each page is an index range
        return await source.fetchall(
            f"SELECT * FROM {table.name} WHERE {table.key} > ? ORDER BY {table.key} LIMIT ?",
            (last if last is not None else -1, BATCH))
    return await source.fetchall(f"SELECT * FROM {table.name} ORDER BY {table.key} LIMIT ? OFFSET ?", (BATCH, done))


async def run(source_url: str, target_url: str) -> dict[str, int]:
    source, target = connect(source_url), connect(target_url)
    await source.open()
    try:
        await target.open()
        try:
            return await transfer(source, target)
        finally:
            await target.close()
    finally:
        await source.close()


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m state.transfer SOURCE_DATABASE_URL TARGET_DATABASE_URL", file=sys.stderr)
        return 2
    try:
        copied = asyncio.run(run(argv[0], argv[1]))
    except (DatabaseUrlError, DatabaseUnavailable, TransferError) as exc:
        print(f"transfer refused: {exc}", file=sys.stderr)
        return 2
    for name, count in copied.items():
        print(f"{name:<22} {count:>9,} rows")
    print("done: point DATABASE_URL at the target and start the bot")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
