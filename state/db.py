"""The database seam: every store talks to a `Database`, one implementation per engine.

Stores write one SQL dialect, the common ground of SQLite ≥ 3.35 and PostgreSQL ≥ 13 (see
docs/architecture.md, "One SQL for two engines"): `?` placeholders (the PostgreSQL implementation
rewrites them to `$n`), `INSERT … ON CONFLICT … DO UPDATE/NOTHING` upserts, `RETURNING`, expanded
`IN (?, ?, …)` lists in chunks of at most `MAX_PARAMS`, 0/1 integers for booleans, epoch seconds
(`REAL` / `DOUBLE PRECISION`) for every time, JSON as text. Correctness never depends on one engine's
locking: concurrent writers are settled by conditional `UPDATE … WHERE`, unique keys and upserts, so
the same statement is safe under SQLite's single writer and PostgreSQL's row locks alike. The little
that must differ (row locks for claims, `LISTEN/NOTIFY`) is a property of the implementation.

    db = connect("sqlite:///data/bot.sqlite3")        # or "postgresql://user:pass@host/db"
    await db.open()                                  # connects and applies migrations
    async with db.transaction() as tx:               # commits on success, rolls back on error
        await tx.execute("UPDATE outbox SET status = ? WHERE id = ?", ("sent", 1))
    rows = await db.fetchall("SELECT * FROM outbox WHERE status = ?", ("pending",))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import parse_qsl, urlparse

if TYPE_CHECKING:
    from .availability import WatchedDatabase

Params = Sequence[Any]
Engine = Literal["sqlite", "postgresql"]

MAX_PARAMS = 500
"""Longest `IN (…)` list a store binds in one statement (well under both engines' limits)."""

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")


def _host_and_port(text: str) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` of a PostgreSQL URL's host list; DatabaseUrlError naming what is wrong."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host:
        raise DatabaseUrlError("DATABASE_URL for PostgreSQL needs a host: postgresql://user:pass@host:5432/db "
                               "(several: postgresql://user@h1:5432,h2:5432/db?target_session_attrs=read-write)")
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise DatabaseUrlError(f"DATABASE_URL has a port that is not a number between 1 and 65535: {port!r}")
    return host.lower(), int(port) if port else 5432


class DatabaseUrlError(ValueError):
    """DATABASE_URL names something this build cannot open; the message says what to write instead."""


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached (or refused us) at start-up, after retrying."""


class Row(Protocol):
    """A result row: columns by name (sqlite3.Row and asyncpg.Record both qualify)."""

    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]:
        """The values in column order (sqlite3.Row, asyncpg.Record)."""
        ...


class Connection(Protocol):
    """Statements, inside or outside a transaction."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...


class Database(Connection, Protocol):
    """A connection (SQLite) or pool (PostgreSQL) with versioned migrations applied at `open()`."""

    engine: Engine
    row_lock: str
    """Appended to a `SELECT` that claims rows: `FOR UPDATE SKIP LOCKED` on PostgreSQL, empty on SQLite
    (whose single writer already serialises claims)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """A write transaction: commits on success, rolls back on any exception."""
        ...

    async def ping(self) -> bool:
        """True when the database answers a query within a short timeout (for /healthz)."""
        ...

    async def schema_version(self) -> int: ...

    async def continue_ids(self, table: str, column: str) -> None:
        """After rows were written with explicit ids (a transfer), make the next generated id follow the largest
        (PostgreSQL's identity sequence; SQLite's AUTOINCREMENT follows by itself)."""
        ...

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call `callback(payload)` for every `notify` on `channel`, from any process on this database (and with
        payload `"*"` when notifications may have been missed, e.g. after a lost connection: drop everything)."""
        ...

    async def notify(self, channel: str, payload: str, conn: Connection | None = None) -> None:
        """Tell every subscriber of `channel`, in every process; on `conn`, delivered when its transaction
        commits (PostgreSQL NOTIFY). SQLite: this process only (one process per database file)."""
        ...


INTERACTIVE: ContextVar[bool] = ContextVar("database_interactive", default=False)
"""Set while someone waits for the answer (a turn): an engine with one connection (SQLite) serves such statements
before queued background work (delivery, expansion, jobs). See `interactive()`."""


@contextmanager
def interactive() -> Iterator[None]:
    """Statements from here (and tasks started here) are a person's turn: served before background work."""
    token = INTERACTIVE.set(True)
    try:
        yield
    finally:
        INTERACTIVE.reset(token)


ANY = "*"
"""The payload that means "something may have changed: forget everything" (see `Database.subscribe`)."""
CACHE_CHANNEL = "bot_cache"
"""Where stores tell every process to drop a cached entry (`references:<id>`, `timezone:<subject>`)."""


def is_database_error(exc: BaseException) -> bool:
    """Whether `exc` came from the database (either engine's driver), e.g. to count it."""
    import sqlite3

    import asyncpg

    return isinstance(exc, sqlite3.Error | asyncpg.PostgresError | asyncpg.InterfaceError)


def by_name(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Rows as dicts, for reading many columns of many rows by name (a sqlite3.Row compares the name with each
    column's in turn on every read)."""
    if not rows:
        return []
    names = list(rows[0].keys())
    return [dict(zip(names, row, strict=True)) for row in rows]


def marks(count: int) -> str:
    """`?, ?, ?` for an `IN (…)` list of `count` values."""
    return ", ".join("?" * count)


def chunks(values: Sequence[Any], size: int = MAX_PARAMS) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass(frozen=True)
class DatabaseUrl:
    """A checked DATABASE_URL: the engine and what its driver needs."""

    engine: Engine
    target: str  # SQLite: the file path; PostgreSQL: the DSN as given
    display: str  # for logs: no password
    synchronous: str = "FULL"  # SQLite: `?synchronous=normal` trades the last commits on power loss for speed

    @property
    def sqlite_path(self) -> str:
        if self.engine != "sqlite":
            raise DatabaseUrlError("not a SQLite URL")
        return self.target


def parse_database_url(url: str) -> DatabaseUrl:
    """`sqlite:///relative.db`, `sqlite:////abs.db`, `postgresql://user:pass@host:5432/db?sslmode=require`
    (also `postgres://`; several hosts, `postgresql://user@h1:5432,h2:5432/db?target_session_attrs=read-write`, as
    libpq and asyncpg accept them, for a primary with standbys); DatabaseUrlError naming the problem otherwise."""
    parsed = urlparse(url.strip())
    scheme = parsed.scheme.lower()
    if scheme == "sqlite":
        if parsed.netloc:
            raise DatabaseUrlError(
                "DATABASE_URL for sqlite takes no host: write sqlite:///relative/path or sqlite:////abs")
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        if not path:
            raise DatabaseUrlError("DATABASE_URL has no file path, e.g. sqlite:///data/bot.sqlite3")
        options = dict(parse_qsl(parsed.query, keep_blank_values=True))
        synchronous = options.pop("synchronous", "full").upper()
        if options or synchronous not in ("FULL", "NORMAL"):
            raise DatabaseUrlError("DATABASE_URL for sqlite takes only ?synchronous=full (the default) or "
                                   "?synchronous=normal")
        return DatabaseUrl("sqlite", path, f"sqlite:///{path}", synchronous)
    if scheme in ("postgresql", "postgres"):
        userinfo, _, hostlist = parsed.netloc.rpartition("@")
        hosts = [_host_and_port(h) for h in hostlist.split(",")]
        if not parsed.path.strip("/"):
            raise DatabaseUrlError("DATABASE_URL for PostgreSQL needs a database name: postgresql://user@host/db")
        query = dict(parse_qsl(parsed.query, keep_blank_values=True))
        unknown = sorted(set(query) - {"sslmode", "application_name", "connect_timeout", "target_session_attrs"})
        if unknown:
            raise DatabaseUrlError(
                f"DATABASE_URL option {unknown[0]!r} is not supported; use sslmode, application_name, "
                "connect_timeout or target_session_attrs")
        if "sslmode" in query and query["sslmode"] not in SSL_MODES:
            raise DatabaseUrlError(
                f"DATABASE_URL sslmode must be one of {', '.join(SSL_MODES)}, got {query['sslmode']!r}")
        if query.get("target_session_attrs", "read-write") not in SESSION_ATTRS:
            raise DatabaseUrlError(f"DATABASE_URL target_session_attrs must be one of {', '.join(SESSION_ATTRS)}, "
                                   f"got {query['target_session_attrs']!r}")
        if len(hosts) > 1 and query.get("target_session_attrs") not in ("read-write", "primary"):
            raise DatabaseUrlError("DATABASE_URL names several hosts: add ?target_session_attrs=read-write so the bot "
                                   "connects only to the primary")
        user = f"{userinfo.partition(':')[0]}@" if userinfo else ""
        where = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in hosts)
        return DatabaseUrl("postgresql", url.strip(), f"postgresql://{user}{where}{parsed.path}")
    raise DatabaseUrlError(
        f"DATABASE_URL scheme {parsed.scheme or '(none)'!r} is not supported; use sqlite:///path/to/file.sqlite3 "
        "or postgresql://user:password@host:5432/database")


def connect(url: str, *, startup_timeout_s: float = 30.0, pool_size: int = 10,
            busy_timeout_s: float = 10.0) -> WatchedDatabase:
    """The `Database` for DATABASE_URL (not opened yet: call `open()`), watched for outages
    (`state.availability.WatchedDatabase`: its `availability` says whether it is there).

    PostgreSQL only: `startup_timeout_s` is how long `open()` keeps retrying an unreachable server,
    `pool_size` the most connections this process opens. SQLite only: `busy_timeout_s` is how long a statement
    waits for another process's lock before the database counts as unavailable."""
    from .availability import WatchedDatabase

    parsed = parse_database_url(url)
    if parsed.engine == "sqlite":
        from .sqlite import SqliteDatabase

        return WatchedDatabase(SqliteDatabase(parsed.target, synchronous=parsed.synchronous,
                                              busy_timeout_ms=max(1, round(busy_timeout_s * 1000))))
    from .postgres import PostgresDatabase

    return WatchedDatabase(PostgresDatabase(parsed.target, display=parsed.display,
                                            startup_timeout_s=startup_timeout_s, max_size=pool_size))
