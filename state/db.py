"""The embedded SQLite database: one aiosqlite connection, serialised transactions, versioned migrations."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiosqlite

from .migrations import MIGRATIONS, Migration

log = logging.getLogger(__name__)

Params = Sequence[Any] | dict[str, Any]


class DatabaseUrlError(ValueError):
    """DATABASE_URL names something this build cannot open."""


def sqlite_path_from_url(url: str) -> str:
    """`sqlite:///data/bot.sqlite3` → `data/bot.sqlite3`; `sqlite:////abs.db` → `/abs.db`; `:memory:` kept."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        raise DatabaseUrlError(
            f"DATABASE_URL scheme {parsed.scheme or '(none)'!r} is not supported; use sqlite:///path/to/file.sqlite3"
        )
    if parsed.netloc:
        raise DatabaseUrlError("DATABASE_URL for sqlite takes no host: write sqlite:///relative/path or sqlite:////abs")
    path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    if not path:
        raise DatabaseUrlError("DATABASE_URL has no file path, e.g. sqlite:///data/bot.sqlite3")
    return path


class Database:
    """Owns the connection. Every statement runs under one asyncio lock so that transactions of
    concurrent coroutines never interleave on the shared connection; `BEGIN IMMEDIATE` plus a busy
    timeout keeps other processes on the same file safe too."""

    def __init__(self, path: str, migrations: Iterable[Migration] = MIGRATIONS) -> None:
        self.path = path
        self._migrations = tuple(sorted(migrations, key=lambda m: m.version))
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str) -> Database:
        return cls(sqlite_path_from_url(url))

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def open(self) -> None:
        """Connect, set pragmas and bring the schema to the latest version."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        try:
            for pragma in (
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=NORMAL",
                "PRAGMA busy_timeout=5000",
                "PRAGMA foreign_keys=ON",
            ):
                await self._conn.execute(pragma)
            await self._migrate()
        except BaseException:
            await self.close()  # a failed open must not leave the connection's thread running
            raise

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            async with self._lock:
                await conn.close()

    async def schema_version(self) -> int:
        row = await self.fetchone("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        return int(row["v"]) if row else 0

    async def _migrate(self) -> None:
        await self.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        current = await self.schema_version()
        newest = self._migrations[-1].version if self._migrations else 0
        if current > newest:
            raise RuntimeError(
                f"database {self.path} has schema version {current}, newer than this build knows ({newest})"
            )
        for migration in self._migrations:
            if migration.version <= current:
                continue
            async with self.transaction() as conn:
                await conn.executescript_in_tx(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, datetime('now'))",
                    (migration.version, migration.name),
                )
            log.info("database migrated to version %d (%s)", migration.version, migration.name)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction; commits on success, rolls back on any exception."""
        async with self._lock:
            conn = self.conn
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(conn)
            except BaseException:
                await conn.rollback()
                raise
            else:
                await conn.commit()

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement in its own transaction; returns the number of rows changed."""
        async with self._lock:
            cursor = await self.conn.execute(sql, params)
            return cursor.rowcount

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        async with self._lock, self.conn.execute(sql, params) as cursor:
            row: sqlite3.Row | None = await cursor.fetchone()
            return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self._lock, self.conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def ping(self) -> bool:
        """True when the database answers a query (used by /healthz)."""
        try:
            return await asyncio.wait_for(self.fetchone("SELECT 1"), timeout=2.0) is not None
        except Exception:  # any failure means "not healthy"; the caller reports it
            log.warning("database ping failed", exc_info=True)
            return False


class Transaction:
    """The statements available inside `Database.transaction()`."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self._conn.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        async with self._conn.execute(sql, params) as cursor:
            row: sqlite3.Row | None = await cursor.fetchone()
            return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def executescript_in_tx(self, script: str) -> None:
        """Run `;`-separated DDL statements inside the current transaction (executescript would commit)."""
        for statement in (s.strip() for s in script.split(";")):
            if statement:
                await self._conn.execute(statement)
