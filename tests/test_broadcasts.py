"""Broadcasts over HTTP: a notify to more targets than the answer lists is written page by page by its job, its
payload stored once, its progress counted as rows change, and each recipient's policy decided at send time."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from state.clock import FakeClock
from state.model import conversation_subject
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble
from tests.outbox_seed import record

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


async def seeded(start_bot: StartBot, double: ConnectorDouble, count: int, *, tenants: int = 3) -> BotApplication:
    app = await start_bot(notify_token=TOKEN)
    conversations = [(f"a:conv-{n:04d}", f"tenant-{n % tenants}") for n in range(count)]
    for conversation_id, tenant_id in conversations:
        double.add_conversation(conversation_id, tenant_id)
    await app.references.upsert_many([record(c, t, double.url) for c, t in conversations], reactivate=True)
    app.broadcasts.page, app.broadcasts.list_page, app.broadcasts.pages_per_run = 40, 30, 2  # several pages, runs
    return app


async def notify(http: aiohttp.ClientSession, app: BotApplication, body: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(bot_url(app, "/api/notify"), json=body, headers=AUTH) as response:
        return response.status, await response.json()


async def batch(http: aiohttp.ClientSession, app: BotApplication, batch_id: str) -> dict[str, Any]:
    async with http.get(bot_url(app, f"/api/notify/batches/{batch_id}"), headers=AUTH) as response:
        assert response.status == 200
        return dict(await response.json())


async def expand(app: BotApplication, http: aiohttp.ClientSession, batch_id: str) -> dict[str, Any]:
    """Run the expansion job (and its follow-up runs) until every recipient is written."""
    for _ in range(100):
        progress = await batch(http, app, batch_id)
        if progress["expansion"] == "expanded":
            return progress
        await app.scheduler.run_due()
    raise AssertionError(f"batch {batch_id} still expanding: {progress}")


async def deliver_all(app: BotApplication, clock: FakeClock) -> None:
    """Claim and send (here, or in the worker's own loop) until no row is pending, moving the fake clock to each
    next wake-up."""
    worker = app.worker
    for _ in range(500):
        await worker.maintain()  # takes the tenants with work, claims their rows (the policy decides here)
        worker.pump()
        await worker.idle()
        await worker.flush()
        if not await app.db.fetchone("SELECT 1 AS x FROM outbox WHERE status = 'pending' LIMIT 1"):
            return
        wake = worker._queue.next_wake()
        if wake is not None:
            clock.advance(max(0.0, wake - clock.monotonic()))
        await asyncio.sleep(0)  # the worker's loop may hold sends that are about to start
    raise AssertionError("rows still pending after 500 rounds")


async def test_a_broadcast_to_everyone_is_written_in_pages_and_sent_once_each(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await seeded(start_bot, double, 150)
    status, body = await notify(http, app, {"to": {"all": True}, "text": "Office closed on Friday"})
    assert status == 202
    assert "ids" not in body, "over 100 targets: no ids in the answer"
    assert body["state"] == "expanding" and body["queued"] == 0
    progress = await expand(app, http, body["batchId"])
    assert progress["requested"] == 150 and progress["targets"] == 150 and progress["counts"] == {"pending": 150}
    rows = await app.db.fetchall("SELECT payload, broadcast_id FROM outbox")
    assert len(rows) == 150 and {(r["payload"], r["broadcast_id"]) for r in rows} == {("", rows[0]["broadcast_id"])}, \
        "the payload is stored once, in the broadcast"
    await deliver_all(app, fake_clock)
    sent = Counter(r.conversation_id for r in double.find(op="send") if r.status and r.status < 300)
    assert len(sent) == 150 and set(sent.values()) == {1}
    assert {a["text"] for a in double.sent_activities()} == {"Office closed on Friday"}
    done = await batch(http, app, body["batchId"])
    assert done["counts"] == {"sent": 150} and done["finished"] is True and done["finishedAt"] is not None


async def test_policy_is_decided_when_each_recipient_is_about_to_go(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await seeded(start_bot, double, 120)
    await app.engagement.fire("a:conv-0007", "topic_started", prompt="Which product?")  # mid-topic
    await app.preferences.mute(conversation_subject("a:conv-0011"), None)  # muted notifications
    status, body = await notify(http, app, {"to": {"all": True}, "text": "Policy check"})
    assert status == 202
    await expand(app, http, body["batchId"])
    written = await app.db.fetchall("SELECT conversation_id FROM outbox WHERE conversation_id IN (?, ?)",
                                    ("a:conv-0007", "a:conv-0011"))
    assert len(written) == 2, "the expansion writes every recipient; the policy decides later, for each"
    await deliver_all(app, fake_clock)
    sent = {r.conversation_id for r in double.find(op="send") if r.status and r.status < 300}
    assert "a:conv-0007" not in sent and "a:conv-0011" not in sent and len(sent) == 118
    progress = await batch(http, app, body["batchId"])
    assert progress["counts"] == {"sent": 118, "held": 1, "dropped": 1} and progress["finished"] is False
    assert await app.proactive.release("a:conv-0007") == 1, "the held one is released when the topic ends"
    await deliver_all(app, fake_clock)
    assert [a["text"] for a in double.sent_activities("a:conv-0007")] == ["Policy check"]
    progress = await batch(http, app, body["batchId"])
    assert progress["counts"] == {"sent": 119, "dropped": 1} and progress["finished"] is True


async def test_a_dedup_key_skips_everyone_an_earlier_broadcast_reached(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await seeded(start_bot, double, 130)
    request = {"to": {"all": True}, "text": "Once only", "dedupKey": "once-1"}
    _, first = await notify(http, app, request)
    await expand(app, http, first["batchId"])
    await app.references.upsert(record("a:conv-new", "tenant-0", double.url), reactivate=True)
    double.add_conversation("a:conv-new", "tenant-0")
    _, again = await notify(http, app, request)
    second = await expand(app, http, again["batchId"])
    assert second["requested"] == 131 and second["targets"] == 1 and second["duplicates"] == 130
    _, small = await notify(http, app, {"to": {"conversations": ["a:conv-0003", "a:conv-0004"]}, "text": "Once only",
                                        "dedupKey": "once-1"})
    assert small["duplicates"] == 2 and small["queued"] == 0 and len(small["ids"]) == 2
    await deliver_all(app, fake_clock)
    sent = Counter(r.conversation_id for r in double.find(op="send") if r.status and r.status < 300)
    assert len(sent) == 131 and set(sent.values()) == {1}


async def test_a_long_list_is_written_by_the_job_and_the_unknown_are_counted(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await seeded(start_bot, double, 110)
    await app.references.mark_inactive("a:conv-0002", "uninstalled")
    listed = [f"a:conv-{n:04d}" for n in range(110)] + ["a:ghost-1", "a:ghost-2"]
    status, body = await notify(http, app, {"to": {"conversations": listed}, "text": "Listed"})
    assert status == 202 and "ids" not in body
    progress = await expand(app, http, body["batchId"])
    assert progress["requested"] == 109 and progress["unknown"] == 2 and progress["inactive"] == 1
    await deliver_all(app, fake_clock)
    assert (await batch(http, app, body["batchId"]))["counts"] == {"sent": 109}


async def test_a_small_request_still_answers_every_row(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await seeded(start_bot, double, 100)
    status, body = await notify(http, app, {"to": {"all": True}, "text": "Hundred"})
    assert status == 202 and len(body["ids"]) == 100 and body["queued"] == 100 and body["state"] == "expanded"
    async with http.get(bot_url(app, f"/api/notify/{body['ids'][0]}"), headers=AUTH) as response:
        row = await response.json()
    assert row["batchId"] == body["batchId"] and row["status"] == "pending"
    await deliver_all(app, fake_clock)
    assert (await batch(http, app, body["batchId"]))["counts"] == {"sent": 100}


async def test_a_broadcast_to_everyone_reaches_only_the_tenants_the_bot_serves(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot(notify_token=TOKEN, allowed_tenants=("tenant-0", "TENANT-1"))
    conversations = [(f"a:conv-{n:04d}", f"tenant-{n % 3}") for n in range(150)]
    for conversation_id, tenant_id in conversations:
        double.add_conversation(conversation_id, tenant_id)
    await app.references.upsert_many([record(c, t, double.url) for c, t in conversations], reactivate=True)
    app.broadcasts.page = 40
    _, body = await notify(http, app, {"to": {"all": True}, "text": "Served tenants only"})
    progress = await expand(app, http, body["batchId"])
    assert progress["requested"] == 100 and progress["targets"] == 100
    await deliver_all(app, fake_clock)
    sent = {r.conversation_id for r in double.find(op="send") if r.status and r.status < 300}
    assert sent == {c for c, t in conversations if t != "tenant-2"}
