"""Migrations on both engines: equivalent schemas, SQLite's move to epoch times, channel threads folded into
their channel, concurrent start-ups."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from state.clock import FakeClock
from state.db import Database, connect
from state.migrations import MIGRATIONS, Migration
from state.outbox import OutboxItem, OutboxStore
from state.postgres import PostgresDatabase
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


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_channel_threads_fold_into_one_record_per_channel(engine: str, request: pytest.FixtureRequest,
                                                                 tmp_path: Path) -> None:
    """Version 7: a release that kept one record per thread is migrated to one per channel, losing nothing."""
    def open_at(migrations: tuple[Migration, ...]) -> Database:
        if engine == "sqlite":
            return SqliteDatabase(str(tmp_path / "v6.sqlite3"), migrations)
        return PostgresDatabase(url, migrations)

    url = request.getfixturevalue("postgres_server").create_database() if engine == "postgresql" else ""
    channel, thread1, thread2 = "19:c@thread.tacv2", "19:c@thread.tacv2;messageid=1", "19:c@thread.tacv2;messageid=2"
    old = open_at(MIGRATIONS[:6])
    await old.open()
    kinds = {"dm": "personal", "group": "groupChat"}
    for conversation_id, user, seen in ((thread1, "29:ada", 100.0), (thread2, "29:bob", 200.0), ("dm", "29:ada", 50.0),
                                        ("group", "29:bob", 20.0)):
        kind = kinds.get(conversation_id, "channel")
        await old.execute(
            "INSERT INTO conversation_refs (conversation_id, channel_id, service_url, conversation_type, user_id, "
            "reference, first_seen, last_seen) VALUES (?, 'msteams', ?, ?, ?, '{}', ?, ?)",
            (conversation_id, f"https://s{int(seen)}/", kind, user, seen, seen))
        await old.execute("INSERT INTO conversation_members VALUES (?, ?, NULL, ?, ?)",
                          (conversation_id, user, user.upper(), seen))
    await old.execute("INSERT INTO conversation_members VALUES (?, '29:ada', NULL, 'ADA', 150)", (thread2,))
    for conversation_id, state, welcomed in ((thread1, "in_topic", 1), (thread2, "idle", 0), ("group", "in_topic", 1),
                                             ("dm", "in_topic", 1)):
        await old.execute("INSERT INTO engagement (conversation_id, state, welcomed, updated_at) VALUES (?, ?, ?, 1)",
                          (conversation_id, state, welcomed))
    await old.execute("INSERT INTO preferences (subject, muted, updated_at) VALUES (?, 1, 5)",
                      (f"conversation:{thread2}",))
    await old.execute("INSERT INTO preferences (subject, muted, updated_at) VALUES ('user:29:ada', 1, 5)")
    await old.execute("INSERT INTO watches (user_id, conversation_id, product, product_key, condition, created_at, "
                      "updated_at) VALUES ('29:ada', ?, 'gadget', 'gadget', '{}', 1, 1)", (thread1,))
    await old.execute("INSERT INTO analyses (id, user_id, conversation_id, product, product_key, status, "
                      "started_at, due_at, updated_at) VALUES ('a1', '29:bob', ?, 'gizmo', 'gizmo', 'running', "
                      "1, 2, 1)", (thread2,))
    for conversation_id, status in ((thread1, "held"), ("dm", "held"), (thread2, "sent")):
        await old.execute("INSERT INTO outbox (conversation_id, payload, status, not_before, created_at, updated_at) "
                          "VALUES (?, '{}', ?, 1, 1, 1)", (conversation_id, status))
    await old.close()

    db = open_at(MIGRATIONS)
    await db.open()
    try:
        refs = await db.fetchall("SELECT conversation_id, service_url, user_id FROM conversation_refs "
                                 "ORDER BY conversation_id")
        assert [(r["conversation_id"], r["service_url"], r["user_id"]) for r in refs] == [
            (channel, "https://s200/", "29:bob"), ("dm", "https://s50/", "29:ada"),
            ("group", "https://s20/", "29:bob")], "the newest thread row wins"
        members = await db.fetchall("SELECT conversation_id, user_id, last_seen FROM conversation_members "
                                    "ORDER BY conversation_id, user_id")
        assert [(m["conversation_id"], m["user_id"], m["last_seen"]) for m in members] == [
            (channel, "29:ada", 150.0), (channel, "29:bob", 200.0), ("dm", "29:ada", 50.0), ("group", "29:bob", 20.0)]
        engagement = await db.fetchall(
            "SELECT conversation_id, state, welcomed FROM engagement ORDER BY conversation_id")
        assert [(e["conversation_id"], e["state"], e["welcomed"]) for e in engagement] == [
            (channel, "idle", 1), ("dm", "in_topic", 1), ("group", "idle", 1)], "a group chat has no topic of its own"
        subjects = await db.fetchall("SELECT subject FROM preferences ORDER BY subject")
        assert [s["subject"] for s in subjects] == [f"conversation:{channel}", "user:29:ada"]
        watch = await db.fetchone("SELECT conversation_id FROM watches")
        analysis = await db.fetchone("SELECT conversation_id FROM analyses")
        assert watch is not None and analysis is not None
        assert watch["conversation_id"] == analysis["conversation_id"] == channel
        outbox = await db.fetchall("SELECT conversation_id, status FROM outbox ORDER BY id")
        assert [(r["conversation_id"], r["status"]) for r in outbox] == [
            (thread1, "pending"), ("dm", "held"), (thread2, "sent")], "only a personal chat's topic holds for everyone"
    finally:
        await db.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_the_outbox_byte_diet_keeps_rows_and_dedup_keys(engine: str, request: pytest.FixtureRequest,
                                                               tmp_path: Path) -> None:
    """An outbox written before "fewer bytes per row version" migrates losing nothing: the dedup key still
    refuses a second row, rows without a key still go in, and no index covers a claim's columns (so a claim
    is a HOT update on PostgreSQL, whose table now leaves pages room for it)."""
    before = next(n for n, m in enumerate(MIGRATIONS) if m.name.startswith("outbox: fewer bytes"))

    def open_at(migrations: tuple[Migration, ...]) -> Database:
        if engine == "sqlite":
            return SqliteDatabase(str(tmp_path / "old.sqlite3"), migrations)
        return PostgresDatabase(url, migrations)

    url = request.getfixturevalue("postgres_server").create_database() if engine == "postgresql" else ""
    old = open_at(MIGRATIONS[:before])
    await old.open()
    for key, status, claimed_by in (("alert:1", "pending", "r-a"), (None, "pending", None), (None, "sent", None)):
        await old.execute("INSERT INTO outbox (dedup_key, conversation_id, tenant_id, payload, status, not_before, "
                          "created_at, updated_at, claimed_by, claimed_until) VALUES (?, 'c', 't', '{}', ?, 1, 1, 1, "
                          "?, ?)", (key, status, claimed_by, 50.0 if claimed_by else None))
    await old.close()

    db = open_at(MIGRATIONS)
    await db.open()
    try:
        rows = await db.fetchall("SELECT dedup_key, status, claimed_by FROM outbox ORDER BY id")
        assert [(r["dedup_key"], r["status"], r["claimed_by"]) for r in rows] == [
            ("alert:1", "pending", "r-a"), (None, "pending", None), (None, "sent", None)]
        store = OutboxStore(db, FakeClock())
        again, keyless = await store.enqueue([OutboxItem({"text": "x"}, conversation_id="c", dedup_key="alert:1"),
                                              OutboxItem({"text": "y"}, conversation_id="c")])
        assert (again.id, again.created) == (1, False) and keyless.created
        with pytest.raises(Exception, match=r"(?i)unique"):
            await db.execute("INSERT INTO outbox (dedup_key, conversation_id, payload, not_before, created_at, "
                             "updated_at) VALUES ('alert:1', 'c', '{}', 1, 1, 1)")
        assert await _indexed_columns(db) & {"claimed_by", "claimed_until"} == set()
        if engine == "postgresql":
            options = await db.fetchone("SELECT reloptions FROM pg_class WHERE relname = 'outbox'")
            assert options is not None and "fillfactor=90" in options["reloptions"]
    finally:
        await db.close()


async def _indexed_columns(db: Database) -> set[str]:
    """Every outbox column an index keys on or names in its WHERE (what PostgreSQL's HOT updates look at)."""
    if db.engine == "sqlite":
        rows = await db.fetchall("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'")
        columns = {r["name"] for i in rows for r in await db.fetchall(f"PRAGMA index_info({i['name']})")}
        where = " ".join(i["sql"].partition(" WHERE ")[2] for i in rows if i["sql"])
    else:
        rows = await db.fetchall(
            "SELECT a.attname AS name FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid "
            "AND a.attnum = ANY(x.indkey) WHERE x.indrelid = 'outbox'::regclass")
        columns = {r["name"] for r in rows}
        where = " ".join(r["w"] or "" for r in await db.fetchall(
            "SELECT pg_get_expr(indpred, indrelid) AS w FROM pg_index WHERE indrelid = 'outbox'::regclass"))
    named = {c["name"] for c in await db.fetchall(
        "SELECT name FROM pragma_table_info('outbox')" if db.engine == "sqlite" else
        "SELECT column_name AS name FROM information_schema.columns WHERE table_name = 'outbox'")}
    return columns | {c for c in named if c in where}
