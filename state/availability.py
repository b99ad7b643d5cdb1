"""Is the database there? Tell a database outage apart from a bug, and say so once when it starts and ends.

`is_unavailable(exc)` is True only for what the engines raise when the database cannot be used right now:
PostgreSQL connection errors (class 08), "cannot connect now" / shutdowns / cancelled statements (class 57),
too many connections, a read-only server (a standby, in recovery), asyncpg's closed connections and no host
matching `target_session_attrs`, socket errors and timeouts raised inside the drivers; SQLite locked or busy
past its busy timeout, or the file gone. Anything else (a constraint, bad SQL, a bug) is not an outage.

`WatchedDatabase` wraps a `Database` (what `state.db.connect` returns): the first unavailable error of any
statement marks the database down (one WARNING naming the reason; the tracebacks of such errors only at DEBUG,
where the parts that saw them log them). A probe (every `probe_s`: a `SELECT pg_is_in_recovery()` on PostgreSQL,
a write lock taken and given back on SQLite) or a statement that works (on SQLite: a write) marks it up again
(one INFO with how long it was gone). Listeners (`on_change`) are told both ways, so the parts that back off
retry at once when it is back instead of at their next backoff step.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import asyncpg

from .db import Connection, Database, Params, Row

log = logging.getLogger(__name__)

_DRIVER_MODULES = ("asyncpg", "aiosqlite", "state.postgres", "state.sqlite", "state.availability")
_SQLITE_OUTAGE = ("database is locked", "database table is locked", "database is busy", "unable to open database",
                  "disk i/o error")
_ASYNCPG_OUTAGE = (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
                   asyncpg.TooManyConnectionsError, asyncpg.ReadOnlySQLTransactionError,
                   asyncpg.exceptions.TargetServerAttributeNotMatched)
_CLOSED = ("connection is closed", "connection was closed", "pool is closing", "pool is closed")


def _raised_in_driver(tb: TracebackType | None) -> bool:
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith(_DRIVER_MODULES):
            return True
        tb = tb.tb_next
    return False


def _one_outage(exc: BaseException) -> bool:
    if isinstance(exc, _ASYNCPG_OUTAGE):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return any(text in str(exc).lower() for text in _CLOSED)
    if isinstance(exc, sqlite3.OperationalError):
        return any(text in str(exc).lower() for text in _SQLITE_OUTAGE)
    if isinstance(exc, OSError | TimeoutError):  # refused, reset, unreachable, timed out: only inside a driver
        return _raised_in_driver(exc.__traceback__)
    return False


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the database cannot be used now (see the module doc)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if _one_outage(current):
            return True
        current, seen = current.__cause__, seen + 1
    return False


def reason(exc: BaseException) -> str:
    """One line for the operator: the error's type and its first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Availability:
    """Up or down, since when, and how long it has been down in total (for the log and the metrics)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._down_since: float | None = None
        self._reason = ""
        self._outage_s = 0.0
        self.outages = 0
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def up(self) -> bool:
        return self._down_since is None

    @property
    def reason(self) -> str:
        """Why it is down ("" while up)."""
        return self._reason

    def outage_seconds(self) -> float:
        """Seconds the database has been unavailable since start, the current outage included."""
        current = 0.0 if self._down_since is None else self._monotonic() - self._down_since
        return self._outage_s + current

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """`listener(up)` on every change (for waking parts that back off)."""
        self._listeners.append(listener)

    def went_down(self, why: str) -> bool:
        """Mark it down; True if it was up (the caller's error started the outage: logged here, once)."""
        if self._down_since is not None:
            return False
        self._down_since, self._reason = self._monotonic(), why
        self.outages += 1
        log.warning("database unavailable: %s", why)
        self._tell(False)
        return True

    def came_back(self) -> bool:
        """Mark it up; True if it was down (logged here, once, with how long it was gone)."""
        if self._down_since is None:
            return False
        gone = self._monotonic() - self._down_since
        self._outage_s += gone
        self._down_since, self._reason = None, ""
        log.info("database available again after %.1f s", gone)
        self._tell(True)
        return True

    def _tell(self, up: bool) -> None:
        for listener in self._listeners:
            try:
                listener(up)
            except Exception:  # one listener's bug must not keep the others from hearing it
                log.exception("database availability listener failed")


class _OutageAtDebug(logging.Filter):
    """asyncpg's pool logs a WARNING with a traceback at every failed attempt to refill itself; during an outage
    that is expected (the outage is logged once): such records go down to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_unavailable(record.exc_info[1]):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_DRIVER_LOGS = _OutageAtDebug()


class WatchedDatabase:
    """A `Database` whose outages are noticed (`availability`) and whose return is probed for.

    Everything else is the wrapped database's (attributes are forwarded)."""

    def __init__(self, inner: Database, *, probe_s: float = 0.5,
                 availability: Availability | None = None) -> None:
        self.inner = inner
        self.engine = inner.engine
        self.row_lock = inner.row_lock
        self.availability = availability or Availability()
        self._probe_s = probe_s
        self._probe: asyncio.Task[None] | None = None
        self._closed = False
        self.availability.on_change(self._changed)
        pool_log = logging.getLogger("asyncpg.pool")
        if _DRIVER_LOGS not in pool_log.filters:
            pool_log.addFilter(_DRIVER_LOGS)

    def _changed(self, up: bool) -> None:
        reconnect = getattr(self.inner, "reconnect_now", None)  # PostgreSQL's notification connection
        if up and reconnect is not None:
            reconnect()

    def __repr__(self) -> str:
        return f"Watched{self.inner!r}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def saw(self, exc: BaseException) -> bool:
        """Note an error from a statement; True if it means the database is unavailable (then the probe runs)."""
        if not is_unavailable(exc):
            return False
        if self.availability.went_down(reason(exc)) or self._probe is None:
            self._start_probe()
        return True

    def _start_probe(self) -> None:
        if self._closed or (self._probe is not None and not self._probe.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._probe = loop.create_task(self._probe_until_back(), name="database-probe")

    async def _probe_until_back(self) -> None:
        while not self._closed and not self.availability.up:
            await asyncio.sleep(self._probe_s)
            try:
                if self.engine == "sqlite":  # never cancelled half-way: a BEGIN finishing after it would stay open
                    await self.check()  # (it does not wait for the lock)
                else:
                    await asyncio.wait_for(self.check(), timeout=max(2.0, self._probe_s * 4))
            except Exception as exc:  # still away; the reason may have changed, the WARNING was said once
                log.debug("database still unavailable: %s", reason(exc))
                continue
            self.availability.came_back()
        self._probe = None

    async def check(self) -> None:
        """Raise unless the database takes writes now: SQLite's write lock can be had, PostgreSQL answers and is
        not a standby in recovery."""
        if self.engine == "sqlite":
            writable = getattr(self.inner, "check_writable", None)
            if writable is not None:
                await writable()
                return
            async with self.inner.transaction():
                pass
            return
        row = await self.inner.fetchone("SELECT pg_is_in_recovery() AS standby")
        if row is not None and row["standby"]:
            raise asyncpg.ReadOnlySQLTransactionError("the server is a standby (in recovery)")

    # -- Database ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        self._closed = False
        await self.inner.open()

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        await self.inner.close()

    def _worked(self, wrote: bool) -> None:
        """A statement succeeded while the database counted as away: a write (any statement on PostgreSQL; on
        SQLite reads go on during another process's lock) proves it is back before the probe's next look."""
        if wrote or self.engine != "sqlite":
            self.availability.came_back()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        try:
            async with self.inner.transaction() as tx:
                yield tx
        except Exception as exc:
            self.saw(exc)
            raise
        if not self.availability.up:
            self._worked(True)

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            changed = await self.inner.execute(sql, params)
        except Exception as exc:
            self.saw(exc)
            raise
        if not self.availability.up:
            self._worked(True)
        return changed

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        try:
            await self.inner.executemany(sql, rows)
        except Exception as exc:
            self.saw(exc)
            raise
        if not self.availability.up:
            self._worked(True)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        try:
            row = await self.inner.fetchone(sql, params)
        except Exception as exc:
            self.saw(exc)
            raise
        if not self.availability.up:
            self._worked(False)
        return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            rows = await self.inner.fetchall(sql, params)
        except Exception as exc:
            self.saw(exc)
            raise
        if not self.availability.up:
            self._worked(False)
        return rows

    async def ping(self) -> bool:
        """The database answers within 2 s and is not in an outage (a return counts once the probe saw it)."""
        try:
            await asyncio.wait_for(self.inner.fetchone("SELECT 1"), timeout=2.0)
        except Exception as exc:
            if not self.saw(exc):
                log.warning("database ping failed: %s", reason(exc), exc_info=True)
            else:
                log.debug("database ping failed", exc_info=True)
            return False
        return self.availability.up

    async def schema_version(self) -> int:
        return await self.inner.schema_version()

    async def continue_ids(self, table: str, column: str) -> None:
        await self.inner.continue_ids(table, column)

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        self.inner.subscribe(channel, callback)

    async def notify(self, channel: str, payload: str, conn: Connection | None = None) -> None:
        try:
            await self.inner.notify(channel, payload, conn)
        except Exception as exc:
            self.saw(exc)
            raise
