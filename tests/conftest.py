"""Shared fixtures: running bot applications, and databases on both engines.

`database_url` is parametrised over SQLite and PostgreSQL (a throwaway server started once per session
from the machine's binaries, a fresh database per test), so every store's contract runs on both.
Without PostgreSQL binaries the PostgreSQL half skips with the reason printed, unless
REQUIRE_POSTGRES=1 (CI), where it fails. BOT_TEST_DATABASE=postgresql runs the bot itself (`start_bot`)
on PostgreSQL instead of SQLite: `make test` does one such pass over the HTTP-level tests.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bot.app import BotApplication
from bot.config import Config
from state.clock import FakeClock
from state.db import Database, connect
from state.migrations import MIGRATIONS
from tests.pg_server import PostgresServer

StartBot = Callable[..., Awaitable[BotApplication]]
OpenDatabase = Callable[[], Awaitable[Database]]
DatabaseOn = Callable[[str], Awaitable[Database]]
ENGINES = ("sqlite", "postgresql")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that run the whole bot (over HTTP) are marked `bot`: the PostgreSQL pass selects them."""
    for item in items:
        if "start_bot" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.bot)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bot: runs the bot application (selected by the PostgreSQL pass)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session; skips (or fails under REQUIRE_POSTGRES=1) without one."""
    server, reason = PostgresServer.find()
    if server is not None:
        try:
            server.start()
        except (RuntimeError, OSError) as exc:
            reason, server = f"PostgreSQL test server did not start: {exc}", None
    if server is None:
        print(f"PostgreSQL unavailable: {reason}", file=sys.stderr)
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}\n(REQUIRE_POSTGRES=1, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    server.template = server.create_database("bot_template")
    # every test database starts as a copy of the migrated template (migrated on a thread of its own: this
    # fixture may first be asked for from inside a running event loop)
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _migrate(server.template)).result()
    yield server
    server.stop()


async def _migrate(url: str) -> None:
    db = connect(url)
    await db.open()
    await db.close()


class PostgresDatabases:
    """Migrated test databases, recycled: a test gets one with empty tables (TRUNCATE is far cheaper than
    CREATE DATABASE); one whose schema a test changed is not reused."""

    def __init__(self, server: PostgresServer) -> None:
        self._server = server
        self._free: list[str] = []

    async def acquire(self) -> str:
        if self._free:
            return self._free.pop()
        return await asyncio.to_thread(self._server.create_database, template="bot_template")

    async def release(self, url: str) -> None:
        try:
            conn = await asyncpg.connect(url, server_settings={"lock_timeout": "2s"})
        except (OSError, asyncpg.PostgresError):
            return
        try:
            if await conn.fetchval("SELECT MAX(version) FROM schema_version") != MIGRATIONS[-1].version:
                return
            tables = [r["tablename"] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename != 'schema_version'")]
            sequences = [r["sequencename"] for r in await conn.fetch(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'")]
            async with conn.transaction():  # DELETE beats TRUNCATE on tables this small
                await conn.execute("SET CONSTRAINTS ALL DEFERRED")
                for table in tables:
                    await conn.execute(f'DELETE FROM "{table}"')
                for sequence in sequences:
                    await conn.execute(f'ALTER SEQUENCE "{sequence}" RESTART')
            self._free.append(url)
        except asyncpg.PostgresError:  # e.g. a lock still held by a process the test left behind: do not reuse
            pass
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def postgres_databases(postgres_server: PostgresServer) -> PostgresDatabases:
    return PostgresDatabases(postgres_server)


@pytest.fixture
async def postgres_url(postgres_databases: PostgresDatabases) -> AsyncIterator[str]:
    """A migrated PostgreSQL database with empty tables, for this test only."""
    url = await postgres_databases.acquire()
    yield url
    await postgres_databases.release(url)


def _test_engine() -> str:
    engine = os.environ.get("BOT_TEST_DATABASE", "sqlite")
    if engine not in ENGINES:
        raise pytest.UsageError(f"BOT_TEST_DATABASE must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/test.sqlite3"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def open_database(database_url: str) -> AsyncIterator[OpenDatabase]:
    """Open (and migrate) `Database`s on `database_url`; several calls are several connections/pools to the
    same database, like processes sharing it. All are closed at teardown."""
    opened: list[Database] = []

    async def open_one() -> Database:
        db = connect(database_url)
        await db.open()
        opened.append(db)
        return db

    yield open_one
    for db in reversed(opened):
        await db.close()


@pytest.fixture
async def db(open_database: OpenDatabase) -> Database:
    return await open_database()


@pytest.fixture
async def database_on(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DatabaseOn]:
    """`await database_on("postgresql")`: an opened, fresh database on that engine (for tests whose own
    parameters name the engine, next to non-database variants). Closed at teardown."""
    opened: list[Database] = []

    async def make(engine: str) -> Database:
        if engine == "sqlite":
            url = f"sqlite:///{tmp_path}/engine{len(opened)}.sqlite3"
        else:
            url = await request.getfixturevalue("postgres_databases").acquire()
        db = connect(url)
        await db.open()
        opened.append(db)
        return db

    yield make
    for db in reversed(opened):
        await db.close()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bot_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where `start_bot` keeps its state: SQLite under tmp_path, or a fresh PostgreSQL database."""
    if _test_engine() == "sqlite":
        return f"sqlite:///{tmp_path}/bot.sqlite3"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def start_bot(bot_database_url: str, fake_clock: FakeClock) -> AsyncIterator[StartBot]:
    """Start BotApplication instances on free ports; all are stopped at teardown."""
    started: list[BotApplication] = []

    async def start(config: Config | None = None, **overrides: object) -> BotApplication:
        base = config or Config(database_url=bot_database_url)
        app = BotApplication(replace(base, **overrides), fake_clock)  # type: ignore[arg-type]
        await app.start(host="127.0.0.1", port=0)
        started.append(app)
        return app

    yield start
    for app in reversed(started):
        await app.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bot_url(app: BotApplication, path: str = "/api/messages") -> str:
    return f"http://127.0.0.1:{app.port}{path}"
