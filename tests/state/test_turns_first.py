"""SQLite's one connection serves a turn's statements before queued background work (state/sqlite.py TurnsFirst)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from state.db import INTERACTIVE, interactive
from state.sqlite import SqliteDatabase, TurnsFirst


async def _queue(lock: TurnsFirst, name: str, order: list[str], *, turn: bool) -> None:
    token = INTERACTIVE.set(turn)
    try:
        async with lock:
            order.append(name)
            await asyncio.sleep(0)
    finally:
        INTERACTIVE.reset(token)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_a_turn_waits_only_for_the_holder_not_for_queued_background_work() -> None:
    lock, order = TurnsFirst(), []
    await lock.__aenter__()  # background work holds the connection
    tasks = [asyncio.create_task(_queue(lock, f"background-{n}", order, turn=False)) for n in range(3)]
    await _settle()
    tasks.append(asyncio.create_task(_queue(lock, "turn-1", order, turn=True)))
    tasks.append(asyncio.create_task(_queue(lock, "turn-2", order, turn=True)))
    await _settle()
    await lock.__aexit__(None, None, None)
    await asyncio.gather(*tasks)
    assert order == ["turn-1", "turn-2", "background-0", "background-1", "background-2"]
    assert not lock.locked()


@pytest.mark.asyncio
async def test_a_cancelled_waiter_neither_keeps_nor_loses_the_lock() -> None:
    lock, order = TurnsFirst(), []
    await lock.__aenter__()
    cancelled = asyncio.create_task(_queue(lock, "cancelled", order, turn=True))
    after = asyncio.create_task(_queue(lock, "after", order, turn=False))
    await _settle()
    cancelled.cancel()  # cancelled while waiting: leaves its queue
    await _settle()
    granted_then_cancelled = asyncio.create_task(_queue(lock, "granted", order, turn=True))
    await _settle()
    await lock.__aexit__(None, None, None)  # hands the lock to "granted" ...
    granted_then_cancelled.cancel()  # ... which is cancelled before it runs: the lock passes on to "after"
    await asyncio.gather(cancelled, granted_then_cancelled, return_exceptions=True)
    await asyncio.wait_for(after, 5)
    assert order == ["after"]
    assert not lock.locked()


@pytest.mark.asyncio
async def test_on_the_database_a_turns_read_overtakes_queued_background_writes(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "bot.sqlite3"))
    await db.open()
    try:
        done: list[str] = []
        await db.execute("CREATE TABLE t (n INTEGER)")
        release = asyncio.Event()

        async def long_transaction() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (1)")
                await release.wait()
            done.append("transaction")

        async def background_write(n: int) -> None:
            await db.execute("INSERT INTO t VALUES (?)", (n,))
            done.append(f"background-{n}")

        async def turn_read() -> None:
            with interactive():
                rows = await db.fetchall("SELECT COUNT(*) AS n FROM t")
            done.append(f"turn saw {rows[0]['n']}")

        holder = asyncio.create_task(long_transaction())
        await _settle()
        writes = [asyncio.create_task(background_write(n)) for n in (2, 3)]
        await _settle()
        turn = asyncio.create_task(turn_read())
        await _settle()
        release.set()
        await asyncio.gather(holder, turn, *writes)
        assert done == ["transaction", "turn saw 1", "background-2", "background-3"]
    finally:
        await db.close()
