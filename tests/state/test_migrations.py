"""Migrations on both engines: equivalent schemas, SQLite's move to epoch times, concurrent start-ups."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from state.db import Database, connect
from state.migrations import MIGRATIONS
from state.sqlite import SqliteDatabase
from tests.pg_server import PostgresServer

T0 = datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)


async def _columns(db: Database) -> dict[str, set[str]]:
    if db.engine == "sqlite":
        tables = [r["name"] for r in await db.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: {r["name"] for r in await db.fetchall(f"PRAGMA table_info({t})")} for t in tables}
    rows = await db.fetchall(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'")
    out: dict[str, set[str]] = {}
    for row in rows:
        out.setdefault(row["table_name"], set()).add(row["column_name"])
    return out


async def _indexes(db: Database) -> set[str]:
    if db.engine == "sqlite":
        rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        return {r["name"] for r in rows}
    rows = await db.fetchall(  # created by CREATE INDEX, not backing a PRIMARY KEY / UNIQUE constraint
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint)")
    return {r["indexname"] for r in rows}


async def test_both_engines_end_with_the_same_tables_columns_and_indexes(
    tmp_path: Path, postgres_url: str
) -> None:
    sqlite, postgres = connect(f"sqlite:///{tmp_path}/s.sqlite3"), connect(postgres_url)
    await sqlite.open()
    await postgres.open()
    try:
        assert await _columns(sqlite) == await _columns(postgres)
        assert await _indexes(sqlite) == await _indexes(postgres)
        assert await sqlite.schema_version() == await postgres.schema_version() == MIGRATIONS[-1].version
    finally:
        await sqlite.close()
        await postgres.close()


async def test_sqlite_text_times_become_epoch_seconds_and_nothing_is_lost(tmp_path: Path) -> None:
    path = str(tmp_path / "old.sqlite3")
    old = SqliteDatabase(path, MIGRATIONS[:5])  # a database as the previous release left it
    await old.open()
    iso = T0.isoformat(timespec="microseconds")
    await old.execute("INSERT INTO conversation_refs (conversation_id, channel_id, service_url, reference, "
                      "first_seen, last_seen) VALUES ('c', 'msteams', 'https://s/', '{}', ?, ?)", (iso, iso))
    await old.execute("INSERT INTO conversation_members VALUES ('c', '29:u', 'aad', 'Ada', ?)", (iso,))
    await old.execute("INSERT INTO bot_state VALUES ('k', 3, '{}', ?)", (iso,))
    await old.execute("INSERT INTO scheduled_jobs (id, key, handler, payload, due_at, slot_at, grace_s, state, "
                      "lease_until, created_at) VALUES ('j', 'poll:x', 'h', '{}', ?, ?, 60, 'running', ?, ?)",
                      (iso, iso, iso, iso))
    await old.close()

    db = SqliteDatabase(path)
    await db.open()
    try:
        ref = await db.fetchone("SELECT first_seen, last_seen FROM conversation_refs")
        member = await db.fetchone("SELECT last_seen FROM conversation_members WHERE conversation_id = 'c'")
        state = await db.fetchone("SELECT etag, updated_at FROM bot_state")
        job = await db.fetchone("SELECT due_at, slot_at, lease_until, created_at, key FROM scheduled_jobs")
        assert ref is not None and member is not None and state is not None and job is not None
        for value in (ref["first_seen"], ref["last_seen"], member["last_seen"], state["updated_at"],
                      job["due_at"], job["slot_at"], job["lease_until"], job["created_at"]):
            assert isinstance(value, float) and value == pytest.approx(T0.timestamp(), abs=0.002)
        assert state["etag"] == 3 and job["key"] == "poll:x"
        await db.execute("DELETE FROM conversation_refs WHERE conversation_id = 'c'")
        assert await db.fetchone("SELECT * FROM conversation_members") is None, "the foreign key still cascades"
    finally:
        await db.close()


async def test_processes_starting_together_on_postgresql_migrate_once(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()  # empty: nothing migrated yet
    replicas = [connect(url) for _ in range(3)]
    try:
        await asyncio.gather(*(db.open() for db in replicas))
        rows = await replicas[0].fetchall("SELECT version FROM schema_version ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in MIGRATIONS]
    finally:
        for db in replicas:
            await db.close()
