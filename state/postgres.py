"""The server engine: PostgreSQL through an asyncpg pool.

Stores write `?` placeholders; `to_dollar` rewrites them to asyncpg's `$1, $2, …` once per statement
text (cached). Migrations run under an advisory lock, so processes starting together migrate once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from .db import ANY, Connection, DatabaseUnavailable, Engine, Params, Row
from .migrations import MIGRATIONS, Migration, check_version

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x7E4B_5EED_0001  # pg_advisory_lock key: "this bot's schema is being migrated"
_RETRY_S = 1.0
_LISTEN_RETRY_S = 0.25  # the notification connection's reconnect backoff: from here, doubling ...
_LISTEN_RETRY_MAX_S = 2.0  # ... to at most this, so wake-ups work again within seconds of the server's return


@functools.lru_cache(maxsize=4096)
def to_dollar(sql: str) -> str:
    """`?` placeholders → `$1, $2, …`, leaving quoted strings, identifiers and comments alone."""
    out: list[str] = []
    n = 0
    i, length = 0, len(sql)
    while i < length:
        c = sql[i]
        if c in ("'", '"'):
            end = sql.find(c, i + 1)
            while end != -1 and end + 1 < length and sql[end + 1] == c:  # doubled quote = escaped
                end = sql.find(c, end + 2)
            end = length - 1 if end == -1 else end
            out.append(sql[i : end + 1])
            i = end + 1
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = length if end == -1 else end
            out.append(sql[i:end])
            i = end
        elif c == "?":
            n += 1
            out.append(f"${n}")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _count(status: str) -> int:
    """Rows changed, from a command tag such as `UPDATE 3`, `DELETE 0` or `INSERT 0 1`."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresDatabase:
    """`Database` on PostgreSQL. `dsn` is the DATABASE_URL as given (asyncpg reads `sslmode` from it)."""

    engine: Engine = "postgresql"
    row_lock = "FOR UPDATE SKIP LOCKED"

    def __init__(self, dsn: str, migrations: Iterable[Migration] = MIGRATIONS, *, display: str = "postgresql",
                 min_size: int = 1, max_size: int = 10, startup_timeout_s: float = 30.0,
                 command_timeout_s: float = 60.0) -> None:
        self._dsn = dsn
        self._display = display
        self._migrations = tuple(sorted(migrations, key=lambda m: m.version))
        self._min_size, self._max_size = min_size, max_size
        self._startup_timeout_s = startup_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._listener: asyncpg.Connection | None = None
        self._relisten: asyncio.Task[None] | None = None
        self._closing = False
        self._relisten_now = asyncio.Event()

    def __repr__(self) -> str:
        return f"PostgresDatabase({self._display!r})"

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool

    async def open(self) -> None:
        """Connect (retrying for up to `startup_timeout_s`, saying so in the log), then migrate."""
        deadline = time.monotonic() + self._startup_timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=self._min_size, max_size=self._max_size,
                    command_timeout=self._command_timeout_s, statement_cache_size=1024,
                    timeout=max(1.0, min(10.0, deadline - time.monotonic())),
                )
                break
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                reason = f"{type(exc).__name__}: {exc}".strip()
                if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidCatalogNameError) \
                        or time.monotonic() + _RETRY_S >= deadline:
                    raise DatabaseUnavailable(
                        f"cannot connect to {self._display} after {attempt} attempt(s): {reason}") from None
                log.warning("waiting for PostgreSQL at %s (attempt %d): %s", self._display, attempt, reason)
                await asyncio.sleep(_RETRY_S)
        try:
            await self._migrate()
            if self._subscribers:
                await self._listen()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closing = True
        if self._relisten is not None:
            self._relisten.cancel()
            await asyncio.gather(self._relisten, return_exceptions=True)
            self._relisten = None
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # -- notifications ------------------------------------------------------------------------------

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        """Register before `open()` (the listening connection is made there) or after (attached at once)."""
        self._subscribers.setdefault(channel, []).append(callback)
        if self._listener is not None:
            asyncio.get_running_loop().create_task(self._listener.add_listener(channel, self._deliver))

    async def notify(self, channel: str, payload: str, conn: Connection | None = None) -> None:
        """This process's subscribers at once (a notification is a hint to drop something: telling early is
        safe), every process's when the transaction commits."""
        self._deliver(None, None, channel, payload)
        await (conn or self).execute("SELECT pg_notify(?, ?)", (channel, payload))

    def _deliver(self, connection: object, pid: object, channel: str, payload: str) -> None:
        for callback in self._subscribers.get(channel, ()):
            try:
                callback(payload)
            except Exception:  # one subscriber's bug must not stop the others
                log.exception("notification subscriber for %s failed", channel)

    async def _listen(self) -> None:
        """A dedicated connection LISTENs on every subscribed channel; if it is lost, reconnect (with backoff)
        and tell every subscriber `*`: what was sent meanwhile was missed."""
        listener = await asyncpg.connect(self._dsn, timeout=10)
        for channel in self._subscribers:
            await listener.add_listener(channel, self._deliver)
        listener.add_termination_listener(self._lost)
        self._listener = listener

    def _lost(self, connection: object) -> None:
        if self._closing or self._relisten is not None:
            return
        log.info("lost the PostgreSQL notification connection; reconnecting")
        self._listener = None
        self._relisten = asyncio.get_running_loop().create_task(self._reconnect(), name="postgres-relisten")

    def reconnect_now(self) -> None:
        """The database is back (state.availability): retry the notification connection now, not at the next
        backoff step."""
        self._relisten_now.set()

    async def _reconnect(self) -> None:
        delay = _LISTEN_RETRY_S
        try:
            while not self._closing:
                try:
                    await self._listen()
                except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                        asyncpg.exceptions.InternalClientError) as exc:
                    log.debug("PostgreSQL notifications still unavailable (%s); retrying in %.1f s", exc, delay)
                    self._relisten_now.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._relisten_now.wait(), delay)
                    delay = min(_LISTEN_RETRY_MAX_S, delay * 2)
                    continue
                log.info("PostgreSQL notifications back")
                for channel in self._subscribers:
                    self._deliver(None, None, channel, ANY)
                return
        finally:
            self._relisten = None

    async def continue_ids(self, table: str, column: str) -> None:
        await self.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE(MAX({column}), 0) + 1, false) "
            f"FROM {table}")

    async def schema_version(self) -> int:
        row = await self.fetchone("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        return int(row["v"]) if row else 0

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
                )
                current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
                check_version(current, self._migrations, self._display)
                for migration in self._migrations:
                    if migration.version <= current:
                        continue
                    async with conn.transaction():
                        for statement in migration.statements("postgresql"):
                            await conn.execute(statement)
                        await conn.execute(
                            "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                            migration.version, migration.name, time.time(),
                        )
                    log.info("database migrated to version %d (%s)", migration.version, migration.name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield _Statements(conn)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return _count(await self.pool.execute(to_dollar(sql), *params))

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self.pool.executemany(to_dollar(sql), [tuple(r) for r in rows])

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = await self.pool.fetchrow(to_dollar(sql), *params)
        return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self.pool.fetch(to_dollar(sql), *params))

    async def ping(self) -> bool:
        try:
            return await asyncio.wait_for(self.pool.fetchval("SELECT 1"), timeout=2.0) == 1
        except Exception:  # any failure means "not healthy"; the caller reports it (state.availability)
            log.debug("database ping failed", exc_info=True)
            return False


class _Statements:
    """One pooled connection inside a transaction."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        return _count(await self._conn.execute(to_dollar(sql), *params))

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._conn.executemany(to_dollar(sql), [tuple(r) for r in rows])

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = await self._conn.fetchrow(to_dollar(sql), *params)
        return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._conn.fetch(to_dollar(sql), *params))
