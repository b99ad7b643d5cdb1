"""Nothing waits forever (issue 20): a notification for someone the bot knows only from a group chat (no 1:1
chat) opens one, also when it arrives in their quiet hours; when Teams refuses to open it, the row ends with
the reason and the batch finishes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from state.clock import FakeClock
from state.model import QuietHours, user_subject
from state.outbox import OutboxItem
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble

TOKEN = "release-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GROUP = "19:group@thread.v2"


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


async def bob_in_a_group_only(http: aiohttp.ClientSession, app: BotApplication, double: ConnectorDouble) -> None:
    bob = Chat(http, app, double, conversation_id=GROUP, user_id="29:bob", kind="groupChat", user_name="Bob")
    await bob.say("help")
    await bob.settle()
    assert [r for r in await app.references.for_user("29:bob") if r.conversation_type == "personal"] == []


async def notify_bob(http: aiohttp.ClientSession, app: BotApplication) -> dict[str, Any]:
    async with http.post(bot_url(app, "/api/notify"), headers=AUTH,
                         json={"to": {"users": ["29:bob"]}, "text": "Inventory count at 18:00"}) as response:
        assert response.status == 202
        answer: dict[str, Any] = await response.json()
        return answer


async def batch(http: aiohttp.ClientSession, app: BotApplication, batch_id: str) -> dict[str, Any]:
    async with http.get(bot_url(app, f"/api/notify/batches/{batch_id}"), headers=AUTH) as response:
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


async def settle(app: BotApplication, clock: FakeClock, seconds: float = 0.0) -> None:
    clock.advance(seconds)
    await app.scheduler.run_due()
    for _ in range(5):
        await app.worker.maintain()  # takes the tenants with work, claims their rows (the policy decides here)
        app.worker.pump()
        await app.worker.idle()
    await app.worker.flush()


def to_bob(double: ConnectorDouble) -> list[dict[str, Any]]:
    return [r.body for r in double.find(op="send") if "Inventory" in str(r.body)]


async def test_a_notification_opens_a_1to1_chat_with_someone_known_from_a_group(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    await bob_in_a_group_only(http, app, double)
    answer = await notify_bob(http, app)
    await settle(app, fake_clock)
    assert len(double.find(op="create")) == 1 and len(to_bob(double)) == 1
    status = await batch(http, app, answer["batchId"])
    assert status["finished"] is True and status["counts"].get("sent") == 1


async def test_in_quiet_hours_it_waits_for_their_end_then_opens_the_chat(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    await bob_in_a_group_only(http, app, double)
    now = fake_clock.now()  # 00:00 UTC: quiet from 22:00 to 07:00
    await app.preferences.set_quiet(user_subject("29:bob"), QuietHours.parse("22:00-07:00"))
    answer = await notify_bob(http, app)
    await settle(app, fake_clock, 60)
    assert to_bob(double) == [], "not inside bob's quiet hours"
    [row_id] = answer["ids"]
    row = await app.outbox.get(row_id)
    assert row is not None and row.not_before >= (now + timedelta(hours=7)).timestamp() - 1, "it has a time to go"
    status = await batch(http, app, answer["batchId"])
    assert status["finished"] is False
    await settle(app, fake_clock, timedelta(hours=7).total_seconds())
    assert len(double.find(op="create")) == 1 and len(to_bob(double)) == 1, "after quiet hours: a 1:1 chat, sent"
    status = await batch(http, app, answer["batchId"])
    assert status["finished"] is True and status["counts"].get("sent") == 1


async def test_when_teams_refuses_the_chat_the_row_ends_with_the_reason_and_the_batch_finishes(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    await bob_in_a_group_only(http, app, double)
    double.fail_next("forbidden_operation", ops={"create"})
    answer = await notify_bob(http, app)
    await settle(app, fake_clock)
    assert to_bob(double) == []
    [row_id] = answer["ids"]
    row = await app.outbox.get(row_id)
    assert row is not None and row.status == "failed", row.status
    assert "ForbiddenOperationException" in (row.last_error or "")
    status = await batch(http, app, answer["batchId"])
    assert status["finished"] is True
    async with http.get(bot_url(app, f"/api/notify/batches/{answer['batchId']}/recipients"), headers=AUTH) as r:
        report = await r.text()
    assert "ForbiddenOperationException" in report, report


async def test_a_row_an_older_version_held_without_a_chat_goes_after_a_restart(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    await bob_in_a_group_only(http, app, double)
    [stuck] = await app.outbox.enqueue([OutboxItem(
        payload={"type": "message", "text": "Inventory count at 18:00"}, conversation_id=None,
        target_user_id="29:bob", tenant_id="t1", category="notification", status="held")])
    await app.stop()
    app = await start_bot(notify_token=TOKEN)
    await settle(app, fake_clock, 60)  # a maintenance pass claims what is pending
    row = await app.outbox.get(stuck.id)
    assert row is not None and row.status == "sent" and len(to_bob(double)) == 1


async def test_a_large_broadcast_also_waits_for_quiet_hours_and_then_opens_the_chat(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    await bob_in_a_group_only(http, app, double)
    await app.preferences.set_quiet(user_subject("29:bob"), QuietHours.parse("22:00-07:00"))
    users = ["29:bob", *(f"29:nobody-{n}" for n in range(100))]  # over 100 targets: expanded by its job
    async with http.post(bot_url(app, "/api/notify"), headers=AUTH,
                         json={"to": {"users": users}, "text": "Inventory count at 18:00"}) as response:
        assert response.status == 202
        answer = await response.json()
    assert answer["state"] == "expanding"
    for _ in range(3):
        await settle(app, fake_clock, 20)  # the expansion, then the worker's claim: the policy decides now
    assert to_bob(double) == [], "not inside bob's quiet hours"
    assert (await batch(http, app, answer["batchId"]))["finished"] is False
    await settle(app, fake_clock, timedelta(hours=7).total_seconds())

    await settle(app, fake_clock, 20)
    assert len(double.find(op="create")) == 1 and len(to_bob(double)) == 1, "after quiet hours: a 1:1 chat, sent"
    assert (await batch(http, app, answer["batchId"]))["finished"] is True
