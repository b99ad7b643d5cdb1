"""kill -9 in the middle of a fan-out, then restart on the same database: nothing queued is lost.

The bot runs as `python main.py` (its own process) against the in-process connector double; the test
SIGKILLs it as soon as the double has accepted KILL_AFTER messages, restarts it, and checks what the double
received and what the outbox says.

Duplicate bound: outcomes are written in batches, so after the kill a message is sent again only if it was
in flight or sent with its outcome not yet committed. A batch being written holds at most
`flush_every` + `max_in_flight` - 1 = 575 outcomes while at most 64 more sends are in flight or just
answered: 639 (docs/architecture.md, "Crash bound"). At this test's pace, two tenants at 50 sends/s, a
batch holds a few rows, so the duplicates seen are a handful.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.bot_process import Bot, start_bot
from tests.connector_double import ConnectorDouble, RecordedRequest
from tests.outbox_seed import conversation_ids, seed_references

CONVERSATIONS = conversation_ids(tenants=2, per_tenant=200)
KILL_AFTER = 120  # mid-way through the second one-second window of the two tenants' 50/s budgets
DUPLICATE_BOUND = 512 + 64 - 1 + 64  # flush_every + max_in_flight - 1 being written, + max_in_flight
TOKEN = "outbox-crash-test"
DELIVERY_TIMEOUT = 30.0


def outbox_rows(database: Path) -> dict[int, tuple[str, str]]:
    """Every outbox row as {id: (status, conversation id)}, read straight from the file."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT id, status, conversation_id FROM outbox").fetchall()
    connection.close()
    return {int(row_id): (str(status), str(conversation)) for row_id, status, conversation in rows}


async def expanded(http: aiohttp.ClientSession, url: str, batch_id: str, timeout: float = 10.0) -> None:
    """Wait until every recipient row of the broadcast is written."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        async with http.get(f"{url}/api/notify/batches/{batch_id}",
                            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            if (await response.json())["expansion"] == "expanded":
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"broadcast {batch_id} not written within {timeout} s")


def accepted(request: RecordedRequest) -> bool:
    return request.op == "send" and request.status is not None and request.status < 300


def conversations_reached(reached: set[str], count: int) -> Callable[[RecordedRequest], bool]:
    """A `wait_for` predicate: true once `count` distinct conversations have an accepted message."""

    def predicate(request: RecordedRequest) -> bool:
        if accepted(request):
            reached.add(request.conversation_id or "")
        return len(reached) >= count

    return predicate


def sends_accepted(count: int) -> Callable[[RecordedRequest], bool]:
    """A `wait_for` predicate: true on the `count`-th accepted send it sees."""
    seen: set[int] = set()

    def predicate(request: RecordedRequest) -> bool:
        if accepted(request):
            seen.add(request.seq)
        return len(seen) >= count

    return predicate


async def test_sigkill_mid_fanout_loses_nothing_and_duplicates_stay_bounded(tmp_path: Path) -> None:
    database = tmp_path / "bot.sqlite3"
    total = len(CONVERSATIONS)
    bots: list[Bot] = []
    async with ConnectorDouble(latency=0.01) as double, aiohttp.ClientSession() as http:
        await seed_references(f"sqlite:///{database}", double.url, CONVERSATIONS)
        try:
            first = await start_bot(tmp_path, f"sqlite:///{database}", "first", TOKEN)
            bots.append(first)
            async with http.post(
                f"{first.url}/api/notify", json={"to": {"all": True}, "text": "Maintenance tonight at 22:00"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as response:
                body = await response.json()
            assert response.status == 202 and body["state"] == "expanding", body  # over 100: written in pages
            await expanded(http, first.url, body["batchId"])
            queued_ids = set(outbox_rows(database))
            assert len(queued_ids) == total

            await double.wait_for(conversations_reached(set(), KILL_AFTER), timeout=DELIVERY_TIMEOUT)
            await first.kill()  # the signal goes out before the double handles anything else
            recorded = outbox_rows(database)
            sent_before = {conversation for status, conversation in recorded.values() if status == "sent"}
            pending = sum(1 for status, _ in recorded.values() if status == "pending")
            assert set(recorded) == queued_ids, "the outbox lost or gained rows at the kill"
            assert len(sent_before) + pending == total, Counter(status for status, _ in recorded.values())
            assert pending > 0, "the fan-out had finished before the kill: nothing was tested"
            assert sent_before, "no outcome was flushed in the second before the kill (flush interval: 50 ms)"

            restart_seq = double.last_seq  # everything the first bot sent arrived before this
            second = await start_bot(tmp_path, f"sqlite:///{database}", "second", TOKEN)
            bots.append(second)
            try:
                await double.wait_for(sends_accepted(pending), timeout=DELIVERY_TIMEOUT, since=restart_seq)
            except TimeoutError:
                resent = sum(1 for r in double.find(op="send") if accepted(r) and r.seq > restart_seq)
                raise AssertionError(
                    f"{pending} rows were pending at the kill; after the restart only {resent} were sent "
                    f"within {DELIVERY_TIMEOUT} s"
                ) from None
            assert await second.stop() == 0, "the restarted bot did not stop cleanly"
        except BaseException:
            for bot in bots:
                print(bot.tail())
            raise
        finally:
            for bot in bots:
                await bot.kill()

    sends = [r for r in double.find(op="send") if accepted(r)]
    per_conversation = Counter(r.conversation_id for r in sends)
    first_bot = {r.conversation_id for r in sends if r.seq <= restart_seq}
    resent = sum(1 for r in sends if r.seq > restart_seq)
    lost = [c for c, _ in CONVERSATIONS if per_conversation[c] == 0]
    duplicated = {c for c, n in per_conversation.items() if n > 1}
    print(f"killed after {len(first_bot)} accepted ({len(sent_before)} recorded as sent, {pending} pending); "
          f"the restarted bot sent {resent}; duplicates: {len(duplicated)} (bound {DUPLICATE_BOUND})")

    assert not lost, f"{len(lost)} conversation(s) never got the message, e.g. {lost[:5]}"
    assert resent == pending, f"the restarted bot sent {resent} messages for {pending} pending rows"
    assert max(per_conversation.values()) <= 2
    assert duplicated == first_bot - sent_before, "a message recorded as sent was sent again"
    assert len(duplicated) <= DUPLICATE_BOUND
    final = outbox_rows(database)
    assert set(final) == queued_ids
    assert Counter(status for status, _ in final.values()) == {"sent": total}
