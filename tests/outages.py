"""Real database outages for tests: PostgreSQL stopped with an immediate shutdown (a crash) and started again on
a server of the test's own; SQLite locked by another connection (`BEGIN EXCLUSIVE`) past the bot's busy timeout
(`DATABASE_BUSY_TIMEOUT` = `BUSY_TIMEOUT_S`, so tests stay fast).

    async def test_x(outage: Outage) -> None:   # parametrized: sqlite, postgresql
        ... outage.url ...; await outage.down(); ...; await outage.up()
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from state.db import connect
from tests.pg_server import PostgresServer

BUSY_TIMEOUT_S = 0.2


class SqliteLock:
    """Another connection's exclusive lock on the SQLite file, held from `down()` to `up()` (on a thread)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._release = threading.Event()
        self._thread: threading.Thread | None = None

    async def down(self) -> None:
        locked = threading.Event()
        self._release.clear()

        def hold() -> None:
            conn = sqlite3.connect(self._path, timeout=10, isolation_level=None)
            try:
                conn.execute("BEGIN EXCLUSIVE")
                locked.set()
                self._release.wait(60)
                conn.execute("ROLLBACK")
            finally:
                conn.close()

        self._thread = threading.Thread(target=hold, name="sqlite-lock", daemon=True)
        self._thread.start()
        assert await asyncio.to_thread(locked.wait, 10), "could not lock the database"

    async def up(self) -> None:
        self._release.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)


class PostgresOutage:
    """A PostgreSQL server of the test's own: `down()` is an immediate shutdown, `up()` starts it again."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    async def down(self) -> None:
        await asyncio.to_thread(self.server.halt)

    async def up(self) -> None:
        await asyncio.to_thread(self.server.resume)


@dataclass
class Outage:
    url: str
    breaker: SqliteLock | PostgresOutage

    async def down(self) -> None:
        await self.breaker.down()

    async def up(self) -> None:
        await self.breaker.up()


async def migrated(url: str) -> None:
    db = connect(url)
    await db.open()
    await db.close()


@pytest.fixture(name="outage", params=["sqlite", "postgresql"])
async def outage_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Outage]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/bot.sqlite3"
        await migrated(url)
        lock = SqliteLock(f"{tmp_path}/bot.sqlite3")
        yield Outage(url, lock)
        await lock.up()
        return
    request.getfixturevalue("postgres_server")  # skips (or fails under REQUIRE_POSTGRES=1) like the others
    server, reason_missing = PostgresServer.find()
    assert server is not None, reason_missing
    server.durable = True  # the immediate shutdown is a crash: only what was flushed survives
    await asyncio.to_thread(server.start)
    try:
        url = await asyncio.to_thread(server.create_database)
        await migrated(url)
        yield Outage(url, PostgresOutage(server))
    finally:
        await asyncio.to_thread(server.stop)
