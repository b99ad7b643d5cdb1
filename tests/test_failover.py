"""Failover to a standby: two bot replicas on a PostgreSQL primary with a synchronous streaming standby
(`pg_basebackup -R`, commits wait until the standby applied them), `DATABASE_URL` naming both hosts with
`target_session_attrs=read-write`. In the middle of a broadcast the primary dies (immediate shutdown: a crash),
the standby is promoted (`pg_ctl promote`), and the bot carries on against it: every conversation gets the
broadcast (0 lost: what was acknowledged was on the standby), duplicates only what was in flight or sent but not
yet recorded, and turns and a new broadcast work on the new primary.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.bot_process import Bot, start_bot
from tests.connector_double import ConnectorDouble, RecordedRequest
from tests.outbox_seed import conversation_ids, seed_references
from tests.pg_server import PostgresServer

TOKEN = "failover-test"
CONVERSATIONS = conversation_ids(tenants=2, per_tenant=150, prefix="a:failover")


def accepted(request: RecordedRequest) -> bool:
    return request.op == "send" and request.status is not None and request.status < 300


def deliveries(double: ConnectorDouble, text: str) -> Counter[str]:
    return Counter(r.conversation_id or "" for r in double.find(op="send")
                   if accepted(r) and text in str(r.body.get("text", "")))


async def until(predicate: Any, timeout: float) -> None:
    """Wait (bounded) for a condition the processes bring about; readiness polling, not timing."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.1)


async def notify(http: aiohttp.ClientSession, bot: Bot, text: str, timeout: float = 30) -> dict[str, Any]:
    """POST /api/notify until it is accepted (503 while the database fails over is the honest answer)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with http.post(f"{bot.url}/api/notify", json={"to": {"all": True}, "text": text},
                             headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            result: dict[str, Any] = await response.json()
            if response.status == 202:
                return result
            assert response.status == 503, result
        assert asyncio.get_running_loop().time() < deadline, "notify accepted again after the failover"
        await asyncio.sleep(0.2)


async def test_the_bot_follows_a_promoted_standby_and_loses_nothing(
    tmp_path: Path, postgres_server: PostgresServer  # (skips without PostgreSQL, like every PostgreSQL test)
) -> None:
    primary, reason = PostgresServer.find()
    assert primary is not None, reason
    standby: PostgresServer | None = None
    bots: list[Bot] = []
    try:
        await asyncio.to_thread(primary.start, replication=True)
        single = await asyncio.to_thread(primary.create_database, "bot")
        async with ConnectorDouble(throttling=True, tenant_rps=50) as double, aiohttp.ClientSession() as http:
            await seed_references(single, double.url, CONVERSATIONS)  # (migrates the database too)
            standby = await asyncio.to_thread(primary.standby)
            await asyncio.to_thread(primary.synchronous)
            url = (f"postgresql://bot@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/bot"
                   "?target_session_attrs=read-write")
            for n in range(2):
                bots.append(await start_bot(tmp_path, url, f"r{n}", TOKEN, REPLICA_ID=f"replica-{n}",
                                            LEASE_SECONDS="6"))
            first = await notify(http, bots[0], "before the failover")
            assert first["state"] == "expanding", first  # its job writes the recipients
            await until(lambda: sum(deliveries(double, "before the failover").values()) >= 60, 30)

            await asyncio.to_thread(primary.halt)  # the primary crashes mid-broadcast
            await asyncio.sleep(3)  # the scenario: an HA manager takes seconds to decide (not waiting for a result)
            await asyncio.to_thread(standby.promote)
            promoted_at = asyncio.get_running_loop().time()

            await until(lambda: len(deliveries(double, "before the failover")) == len(CONVERSATIONS), 90)
            finished_s = asyncio.get_running_loop().time() - promoted_at
            sent = deliveries(double, "before the failover")
            duplicates = sum(n - 1 for n in sent.values())
            print(f"failover mid-broadcast: finished {finished_s:.1f} s after the promotion, {duplicates} duplicate(s)")
            assert duplicates <= 2 * (64 + 256), "bounded by what was in flight or sent but unrecorded"

            second = await notify(http, bots[1], "after the failover")  # the new primary takes new work
            assert second["state"] == "expanding", second
            await until(lambda: len(deliveries(double, "after the failover")) == len(CONVERSATIONS), 90)
            assert max(deliveries(double, "after the failover").values()) == 1, "a new broadcast: once each"
            for bot in bots:
                assert await bot.stop() == 0, bot.tail()
            logs = "".join(bot.log.read_text() for bot in bots)
            assert "database unavailable" in logs and "database available again" in logs, "it did fail over"
            assert "PostgreSQL notifications back" in logs, "the notification connection followed too"
            assert await _outbox_on(url) == {"sent": 2 * len(CONVERSATIONS)}, "every outcome recorded"
    except BaseException:
        for bot in bots:
            print(bot.tail(6000))
        raise
    finally:
        for bot in bots:
            await bot.kill()
        for server in (standby, primary):
            if server is not None:
                await asyncio.to_thread(_stop_quietly, server)


async def _outbox_on(url: str) -> dict[str, int]:
    from state.db import connect

    db = connect(url)
    await db.open()
    try:
        rows = await db.fetchall("SELECT status, COUNT(*) AS n FROM outbox GROUP BY status")
        return {str(r["status"]): int(r["n"]) for r in rows}
    finally:
        await db.close()


def _stop_quietly(server: PostgresServer) -> None:
    try:
        server.stop()
    except RuntimeError:  # already stopped (the crashed primary): only its directory is left to remove
        import shutil

        shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture(autouse=True)
def _needs_postgres(postgres_server: PostgresServer) -> None:
    """Skips (or fails under REQUIRE_POSTGRES=1) without PostgreSQL, like every PostgreSQL test."""
