"""The embedded engine: one aiosqlite connection, statements serialised by a lock that serves turns first.

`BEGIN IMMEDIATE` plus a busy timeout keeps other processes on the same file safe too; WAL lets
readers in other processes go on while one writes. The one connection is shared by people's turns and by
background work (a broadcast's claims and outcome batches, its expansion pages, jobs): `TurnsFirst` lets a
turn's statement (`db.interactive()`) wait only for the statement or transaction running, not for the
background work queued before it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from .db import INTERACTIVE, Connection, DatabaseUnavailable, Engine, Params, Row
from .migrations import MIGRATIONS, Migration, check_version

log = logging.getLogger(__name__)


class TurnsFirst:
    """An asyncio lock with two queues: waiters marked `INTERACTIVE` (a turn) are served before the others,
    each queue in arrival order. Background work cannot starve: turns come a few per second."""

    def __init__(self) -> None:
        self._held = False
        self._turns: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._held

    async def __aenter__(self) -> None:
        if not self._held and not self._turns and not self._others:
            self._held = True
            return
        queue = self._turns if INTERACTIVE.get() else self._others
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # handed over just as the waiter was cancelled: pass it on
            else:
                queue.remove(granted)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        for queue in (self._turns, self._others):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the lock passes to it, still held
                    return
        self._held = False


class SqliteDatabase:
    """`Database` on a SQLite file (or `:memory:`)."""

    engine: Engine = "sqlite"
    row_lock = ""

    def __init__(self, path: str, migrations: Iterable[Migration] = MIGRATIONS, *,
                 busy_timeout_ms: int = 10_000, synchronous: str = "FULL") -> None:
        self.path = path
        self._synchronous = "NORMAL" if synchronous.upper() == "NORMAL" else "FULL"
        self._migrations = tuple(sorted(migrations, key=lambda m: m.version))
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._lock = TurnsFirst()
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}

    def __repr__(self) -> str:
        return f"SqliteDatabase({self.path!r})"

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def open(self) -> None:
        """Connect, set pragmas and bring the schema to the latest version."""
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(f"cannot create the directory of {self.path}: {exc}") from None
        try:
            self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"cannot open {self.path}: {exc}") from None
        self._conn.row_factory = sqlite3.Row
        try:
            for pragma in (
                "PRAGMA journal_mode=WAL",
                f"PRAGMA synchronous={self._synchronous}",  # FULL: a commit survives a power loss
                f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}",
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

    async def continue_ids(self, table: str, column: str) -> None:
        pass  # AUTOINCREMENT already continues after the largest id written

    async def schema_version(self) -> int:
        row = await self.fetchone("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        return int(row["v"]) if row else 0

    async def _migrate(self) -> None:
        await self.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        current = await self.schema_version()
        check_version(current, self._migrations, self.path)
        for migration in self._migrations:
            if migration.version <= current:
                continue
            # SQLite's procedure for schema changes: foreign keys off (outside the transaction), rebuild,
            # check, commit, on again -- so rebuilding a parent table never cascades into its children.
            await self.conn.execute("PRAGMA foreign_keys=OFF")
            try:
                async with self.transaction() as tx:
                    for statement in migration.statements("sqlite"):
                        await tx.execute(statement)
                    broken = await tx.fetchall("PRAGMA foreign_key_check")
                    if broken:
                        raise RuntimeError(f"migration {migration.version} broke {len(broken)} foreign key(s)")
                    await tx.execute(
                        "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                        (migration.version, migration.name, time.time()),
                    )
            finally:
                await self.conn.execute("PRAGMA foreign_keys=ON")
            log.info("database migrated to version %d (%s)", migration.version, migration.name)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            conn = self.conn
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Transaction(conn)
            except BaseException:
                await conn.rollback()
                raise
            else:
                await conn.commit()

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._lock:
            cursor = await self.conn.execute(sql, params)
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._lock:  # one trip to aiosqlite's thread, not three (execute, fetch, close)
            return list(await self.conn.execute_fetchall(sql, params))

    async def check_writable(self) -> None:
        """Raise (`database is locked`) unless the write lock can be had right now: taken and given back at once,
        without waiting on the busy timeout (for state.availability's probe)."""
        async with self._lock:
            conn = self.conn
            await conn.execute("PRAGMA busy_timeout=0")
            try:
                await conn.execute("BEGIN IMMEDIATE")
                await conn.rollback()
            finally:
                await conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        self._subscribers.setdefault(channel, []).append(callback)

    async def notify(self, channel: str, payload: str, conn: Connection | None = None) -> None:
        """This process's subscribers, at once (SQLite has no other process to tell)."""
        for callback in self._subscribers.get(channel, ()):
            callback(payload)

    async def ping(self) -> bool:
        try:
            return await asyncio.wait_for(self.fetchone("SELECT 1"), timeout=2.0) is not None
        except Exception:  # any failure means "not healthy"; the caller reports it (state.availability)
            log.debug("database ping failed", exc_info=True)
            return False


class _Transaction:
    """The statements available inside `SqliteDatabase.transaction()`."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self._conn.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._conn.execute(sql, params) as cursor:
            row: sqlite3.Row | None = await cursor.fetchone()
            return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())
