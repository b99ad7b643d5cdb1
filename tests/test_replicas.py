"""Three real bot processes on one throwaway PostgreSQL, behind no load balancer but each other's URLs, with
the connector double enforcing Teams' windows (50 requests/s per tenant):

- a broadcast through one replica reaches every conversation of two tenants once, with no 429;
- one replica killed (SIGKILL) in the middle of a broadcast: the others finish it after the lease time,
  duplicates only for what the dead one had in flight or unrecorded;
- a notification held because a user is mid-topic (their turn on replica 1) is released exactly once when
  the topic ends on replica 3;
- one person's messages served at the same time by two replicas run one after the other (no apology);
- SIGTERM hands a replica's claims and tenants back and exits 0.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.bot_process import Bot, start_bot
from tests.connector_double import ConnectorDouble, RecordedRequest
from tests.outbox_seed import conversation_ids, seed_references
from tests.pg_server import PostgresServer

TOKEN = "replicas-test"
TENANTS, PER_TENANT = 2, 150
CONVERSATIONS = conversation_ids(tenants=TENANTS, per_tenant=PER_TENANT)
LEASE_S = 6.0
_ids = itertools.count(1)


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


async def live_count(http: aiohttp.ClientSession, bot: Bot) -> int:
    return len((await health(http, bot))["replica"]["live"])


async def until_async(value: Any, wanted: Any, timeout: float) -> None:
    """Poll (bounded) an async reading until it equals `wanted`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await value() != wanted:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"still not {wanted!r}")
        await asyncio.sleep(0.1)


async def notify(http: aiohttp.ClientSession, bot: Bot, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{bot.url}/api/notify", json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        result: dict[str, Any] = await response.json()
        assert response.status == 202, result
        return result


async def health(http: aiohttp.ClientSession, bot: Bot) -> dict[str, Any]:
    async with http.get(f"{bot.url}/healthz?detail=1") as response:
        result: dict[str, Any] = await response.json()
        return result


async def say(http: aiohttp.ClientSession, bot: Bot, double: ConnectorDouble, text: str) -> None:
    activity = {
        "type": "message", "id": f"m{next(_ids)}", "text": text, "channelId": "msteams", "serviceUrl": double.url,
        "conversation": {"id": "dm-ada", "conversationType": "personal"},
        "from": {"id": "29:ada", "name": "Ada"}, "recipient": {"id": "28:bot", "name": "Price Watch"},
        "channelData": {"tenant": {"id": "tenant-00"}},
    }
    async with http.post(f"{bot.url}/api/messages", json=activity) as response:
        assert response.status == 200, await response.text()


async def test_three_replicas_send_once_within_teams_limits_and_take_over_a_dead_one(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database()
    bots: list[Bot] = []
    async with ConnectorDouble(throttling=True, tenant_rps=50) as double, aiohttp.ClientSession() as http:
        await seed_references(url, double.url, CONVERSATIONS)
        try:
            for n in range(3):
                bots.append(await start_bot(tmp_path, url, f"r{n}", TOKEN, REPLICA_ID=f"replica-{n}",
                                            LEASE_SECONDS=str(LEASE_S)))
            for bot in bots:  # every replica has seen the others alive before the first broadcast
                await until_async(lambda bot=bot: live_count(http, bot), 3, 30)

            # 1. one broadcast through replica 0: each conversation once, within Teams' windows
            first = await notify(http, bots[0], {"to": {"all": True}, "text": "broadcast one"})
            assert first["state"] == "expanding", first  # over 100 targets: its job writes the recipients
            await until(lambda: len(deliveries(double, "broadcast one")) == len(CONVERSATIONS), 60)
            sent = deliveries(double, "broadcast one")
            assert max(sent.values()) == 1, "every conversation got it once"
            assert double.throttled_count == 0, double.throttled
            owners = {b.log.name: (await health(http, b))["replica"]["tenants"] for b in bots}
            owned = [t for tenants in owners.values() for t in tenants]
            assert sorted(owned) == sorted(set(owned)), f"one owner per tenant: {owners}"

            # 2. kill -9 the replica sending for tenant-00 in the middle of the next broadcast
            victim = next(b for b, tenants in zip(bots, owners.values(), strict=True) if "tenant-00" in tenants)
            await notify(http, bots[0] if victim is not bots[0] else bots[1],
                         {"to": {"all": True}, "text": "broadcast two"})
            await until(lambda: sum(deliveries(double, "broadcast two").values()) >= 60, 30)
            await victim.kill()
            killed_at = asyncio.get_running_loop().time()
            await until(lambda: len(deliveries(double, "broadcast two")) == len(CONVERSATIONS), 60)
            takeover_s = asyncio.get_running_loop().time() - killed_at
            second = deliveries(double, "broadcast two")
            duplicates = sum(n - 1 for n in second.values())
            print(f"kill -9 mid-broadcast: finished {takeover_s:.1f} s after the kill, {duplicates} duplicate(s)")
            assert duplicates <= 64 + 256, "bounded by what the dead replica had in flight or unrecorded"
            survivors = [b for b in bots if b is not victim]

            # 3. held on replica 1 (mid-topic), released once when the topic ends on replica 2
            await say(http, survivors[0], double, "watch")
            held = await notify(http, survivors[1], {"to": {"conversations": ["dm-ada"]}, "text": "held news"})
            assert held["held"] == 1
            await say(http, survivors[1], double, "cancel")
            await until(lambda: deliveries(double, "held news")["dm-ada"] >= 1, 20)

            async def status() -> str:  # the outcome is written in the sender's next batch
                async with http.get(f"{survivors[1].url}/api/notify/{held['ids'][0]}",
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                    return str((await response.json())["status"])

            await until_async(status, "sent", 20)
            assert deliveries(double, "held news")["dm-ada"] == 1, "released once (the release is atomic)"

            # 4. one person's messages served at once by two replicas: one after the other, no apology
            for _ in range(8):  # both change the dialog stack: unserialised, one would fail on its eTag
                await asyncio.gather(say(http, survivors[0], double, "watch"), say(http, survivors[1], double, "watch"))
                await say(http, survivors[0], double, "cancel")
            apologies = [r for r in double.find(conversation_id="dm-ada") if "went wrong" in str(r.body.get("text"))]
            assert not apologies, f"{len(apologies)} turn(s) lost a race on the dialog state"

            # 5. SIGTERM: claims and tenants handed back, exit 0
            for bot in survivors:
                assert await bot.stop() == 0, bot.tail()
        except BaseException:
            for bot in bots:
                print(bot.tail())
            raise
        finally:
            for bot in bots:
                await bot.kill()


@pytest.fixture(autouse=True)
def _needs_postgres(postgres_server: PostgresServer) -> None:
    """Skips (or fails under REQUIRE_POSTGRES=1) without PostgreSQL, like every PostgreSQL test."""
