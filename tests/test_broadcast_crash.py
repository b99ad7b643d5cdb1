"""kill -9 while a broadcast's recipients are being written, then restart on the same database: the expansion
goes on from where its last committed page ended, so every conversation gets exactly one row and one message.

The bot runs as `python main.py` (its own process) with small pages (BROADCAST_PAGE_SIZE), so writing the
recipients takes many transactions; the test reads the database file until the first page is committed and
SIGKILLs the bot at once. The restarted bot's scheduler runs the expansion job again when the dead process's
lease on it expires (at most 30 s), and the job resumes from the broadcast's cursor.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path

import aiohttp

from tests.bot_process import Bot, start_bot
from tests.connector_double import ConnectorDouble, RecordedRequest
from tests.outbox_seed import conversation_ids, seed_references

CONVERSATIONS = conversation_ids(tenants=3, per_tenant=1500, prefix="a:crash")
TOKEN = "broadcast-crash-test"
SETTINGS = {"BROADCAST_PAGE_SIZE": "10", "TEAMS_TENANT_RPS": "5000"}
RESUME_TIMEOUT = 75.0  # the scheduler's lease on the interrupted run (30 s), then the rest of the writing


def broadcast_state(database: Path) -> tuple[str, str | None] | None:
    """(state, cursor) of the one broadcast, read straight from the file (None before it exists)."""
    with sqlite3.connect(database, timeout=5) as connection:
        row = connection.execute("SELECT state, cursor FROM broadcasts").fetchone()
    connection.close()
    return (str(row[0]), row[1]) if row else None


def recipients(database: Path) -> Counter[str]:
    with sqlite3.connect(database, timeout=5) as connection:
        rows = connection.execute("SELECT conversation_id FROM outbox").fetchall()
    connection.close()
    return Counter(str(r[0]) for r in rows)


async def until(predicate_s: str, check: object, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"not within {timeout} s: {predicate_s}")


async def test_sigkill_mid_expansion_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    database = tmp_path / "bot.sqlite3"
    url = f"sqlite:///{database}"
    total = len(CONVERSATIONS)
    bots: list[Bot] = []
    async with ConnectorDouble() as double, aiohttp.ClientSession() as http:
        for conversation_id, tenant_id in CONVERSATIONS:
            double.add_conversation(conversation_id, tenant_id)
        await seed_references(url, double.url, CONVERSATIONS)
        try:
            first = await start_bot(tmp_path, url, "first", TOKEN, **SETTINGS)
            bots.append(first)
            async with http.post(f"{first.url}/api/notify", json={"to": {"all": True}, "text": "Evacuation drill"},
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                body = await response.json()
            assert response.status == 202 and body["state"] == "expanding", body

            def first_page_committed() -> bool:
                state = broadcast_state(database)
                return state is not None and state[1] is not None

            await until("the first page of recipients is committed", first_page_committed, 20)
            await first.kill()
            at_kill = broadcast_state(database)
            written = recipients(database)
            assert at_kill is not None and at_kill[0] == "expanding", \
                f"the expansion had finished before the kill ({at_kill}): nothing was tested"
            assert 0 < sum(written.values()) < total and max(written.values()) == 1

            second = await start_bot(tmp_path, url, "second", TOKEN, **SETTINGS)
            bots.append(second)
            await until("the restarted bot finished writing the recipients",
                        lambda: (broadcast_state(database) or ("", None))[0] == "expanded", RESUME_TIMEOUT)
            reached: set[str] = set()

            def everyone_reached(request: RecordedRequest) -> bool:
                if request.op == "send" and request.status is not None and request.status < 300:
                    reached.add(request.conversation_id or "")
                return len(reached) >= total

            await double.wait_for(everyone_reached, timeout=60)
            async with http.get(f"{second.url}/api/notify/batches/{body['batchId']}",
                                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                progress = await response.json()
            assert await second.stop() == 0, "the restarted bot did not stop cleanly"
        except BaseException:
            for bot in bots:
                print(bot.tail())
            raise
        finally:
            for bot in bots:
                await bot.kill()

    rows = recipients(database)
    print(f"killed after {sum(written.values())} of {total} recipients were written; resumed from {at_kill[1]}")
    assert set(rows) == {c for c, _ in CONVERSATIONS} and set(rows.values()) == {1}, "one row per conversation"
    assert progress["requested"] == total and progress["targets"] == total, progress
    sent = Counter(r.conversation_id for r in double.find(op="send") if r.status and r.status < 300)
    assert len(sent) == total and set(sent.values()) == {1}, "every conversation got the message once"
