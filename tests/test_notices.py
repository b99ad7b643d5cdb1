"""Notices over HTTP (issue 23): acknowledgements, the delivery report, schedules, cancels, recalls.

Everything is driven as Teams and an organisation's systems would: POST /api/notify with NOTIFY_TOKEN, card
buttons pressed by `adaptiveCard/action` invokes to /api/messages, the Bot Connector double as Teams.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from state.clock import FakeClock
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble
from tests.outbox_seed import record
from tests.test_broadcasts import TOKEN as BROADCAST_TOKEN
from tests.test_broadcasts import deliver_all, expand

TOKEN = BROADCAST_TOKEN  # the broadcast tests' helpers (expand) use theirs
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CARD = "application/vnd.microsoft.card.adaptive"
MESSAGE = "application/vnd.microsoft.activity.message"


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


@pytest.fixture
async def app(start_bot: StartBot) -> BotApplication:
    return await start_bot(notify_token=TOKEN, price_source="none")


async def notify(http: aiohttp.ClientSession, app: BotApplication, body: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(bot_url(app, "/api/notify"), json=body, headers=AUTH) as response:
        return response.status, await response.json()


async def batch(http: aiohttp.ClientSession, app: BotApplication, batch_id: str) -> dict[str, Any]:
    async with http.get(bot_url(app, f"/api/notify/batches/{batch_id}"), headers=AUTH) as response:
        assert response.status == 200
        return dict(await response.json())


async def press(person: Chat, action: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Press an Action.Execute button as `person`: the invoke's answer."""
    activity = person.activity("invoke", name="adaptiveCard/action", value={
        "action": {"type": "Action.Execute", "verb": action.get("verb"), "data": action["data"]},
        "trigger": "manual"}, **fields)
    async with person.http.post(bot_url(person.app), json=activity) as response:
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


def acknowledge_button(person: Chat) -> dict[str, Any]:
    [button] = [a for card in person.cards() for a in card.get("actions") or [] if a.get("title") == "Acknowledge"]
    return button


async def acknowledged_notice(http: aiohttp.ClientSession, app: BotApplication, ada: Chat,
                              body: dict[str, Any] | None = None) -> str:
    await ada.install()
    status, answer = await notify(http, app, body or {
        "to": {"conversations": [ada.conversation_id]}, "text": "Fire drill at 10:00", "acknowledge": True})
    assert status == 202, answer
    await ada.settle()
    return str(answer["batchId"])


# ---- acknowledge -------------------------------------------------------------------------------------------


async def test_acknowledge_records_a_person_once_and_updates_the_card_for_them(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    ada = Chat(http, app, double)
    batch_id = await acknowledged_notice(http, app, ada)
    button = acknowledge_button(ada)
    assert button["type"] == "Action.Execute" and button["fallback"]["type"] == "Action.Submit"
    assert "Fire drill at 10:00" in ada.texts()[-1]
    assert (await batch(http, app, batch_id))["acknowledged"] == 0
    fake_clock.advance(9 * 3600 + 41 * 60)  # 2026-01-01 09:41 UTC: 10:41 in Paris (CET)
    first = await press(ada, button, localTimezone="Europe/Paris")
    assert first["statusCode"] == 200 and first["type"] == CARD
    card = first["value"]
    texts = [b.get("text") for b in card["body"]]
    assert "Fire drill at 10:00" in texts and "Acknowledged at 10:41 CET" in texts
    assert not card.get("actions"), "the answered card has no Acknowledge button any more"
    assert (await batch(http, app, batch_id))["acknowledged"] == 1
    fake_clock.advance(120)
    again = await press(ada, button, localTimezone="Europe/Paris")
    assert "Acknowledged at 10:41 CET" in [b.get("text") for b in again["value"]["body"]], "the first time stays"
    assert (await batch(http, app, batch_id))["acknowledged"] == 1, "a second press counts nothing"
    assert [a for a in double.find(op="update")] == [], "the card changes for the presser only, not for everyone"
    async with http.get(bot_url(app, "/metrics")) as response:
        assert 'bot_notice_actions_total{action="acknowledged"} 1.0' in await response.text()


async def test_a_press_where_the_notice_never_went_or_with_a_forged_batch_records_nothing(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble,
) -> None:
    ada = Chat(http, app, double)
    batch_id = await acknowledged_notice(http, app, ada)
    button = acknowledge_button(ada)
    mallory = Chat(http, app, double, conversation_id="dm-mallory", user_id="29:mallory", user_name="Mallory")
    await mallory.install()
    elsewhere = await press(mallory, button)
    assert elsewhere["type"] == MESSAGE and "not sent here" in elsewhere["value"]
    for forged in ("0" * 32, "../../x", None, 7, {"a": 1}, "A" * 32):
        answer = await press(ada, {"data": {**button["data"], "batchId": forged}})
        assert answer["type"] == MESSAGE and "no longer known" in answer["value"], forged
    assert (await batch(http, app, batch_id))["acknowledged"] == 0


async def test_acknowledge_from_a_client_without_universal_actions(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble,
) -> None:
    ada = Chat(http, app, double)
    batch_id = await acknowledged_notice(http, app, ada, {
        "to": {"conversations": ["dm-ada"]}, "acknowledge": True,
        "card": {"type": "AdaptiveCard", "version": "1.2", "body": [{"type": "TextBlock", "text": "New policy"}]}})
    button = acknowledge_button(ada)
    assert ada.cards()[-1]["version"] == "1.4", "Action.Execute needs cards of version 1.4"
    await ada.press(button["fallback"]["data"])  # Action.Submit: a message with the button's data
    await ada.press(button["fallback"]["data"])
    await ada.settle()
    assert ada.texts()[-2:] == ["Acknowledged at 00:00 UTC"] * 2
    assert (await batch(http, app, batch_id))["acknowledged"] == 1


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
async def test_acknowledge_must_be_true_or_false(app: BotApplication, http: aiohttp.ClientSession, value: Any) -> None:
    status, answer = await notify(http, app, {"to": {"all": True}, "text": "x", "acknowledge": value})
    assert status == 400 and answer["error"]["field"] == "acknowledge"


# ---- the delivery report -----------------------------------------------------------------------------------

HOSTILE = ['Ada "The Countess" Lovelace', "Doe, Jane", "Line\nbreak\r\nand more", "=cmd|' /C calc'!A0",
           "+SUM(A1:A9)", "-2+3", "@import", "\tTab", "Émile 東京 😀"]


async def seeded_with_names(app: BotApplication, double: ConnectorDouble, count: int) -> list[str]:
    conversations = [f"a:conv-{n:04d}" for n in range(count)]
    records = []
    for n, conversation_id in enumerate(conversations):
        double.add_conversation(conversation_id, "tenant-1")
        name = HOSTILE[n] if n < len(HOSTILE) else f"Person {n}"
        records.append(replace(record(conversation_id, "tenant-1", double.url), user_name=name,
                               user_aad_id=f"aad-{n:04d}"))
    await app.references.upsert_many(records, reactivate=True)
    return conversations


async def report(http: aiohttp.ClientSession, app: BotApplication, batch_id: str, accept: str | None,
                 headers: dict[str, str] = AUTH) -> tuple[int, str, str]:
    wanted = {**headers, **({"Accept": accept} if accept else {})}
    async with http.get(bot_url(app, f"/api/notify/batches/{batch_id}/recipients"), headers=wanted) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_the_delivery_report_streams_every_recipient_as_csv_or_json_lines(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    conversations = await seeded_with_names(app, double, 130)
    app.broadcasts.page, app.notice_endpoints.page = 50, 40  # several pages of expansion and of the report
    double.fail_next("blocked_by_user", conversation_id="a:conv-0005", ops={"send"})
    status, body = await notify(http, app, {"to": {"all": True}, "text": "Quarterly results", "acknowledge": True})
    assert status == 202
    await expand(app, http, body["batchId"])
    await deliver_all(app, fake_clock)
    presser = Chat(http, app, double, conversation_id="a:conv-0003", user_id="29:user-conv-0003", user_name=HOSTILE[3])
    button = next(a for card in presser.cards() for a in card.get("actions") or [] if a.get("title") == "Acknowledge")
    assert (await press(presser, button))["type"] == CARD

    status, content_type, text = await report(http, app, body["batchId"], "text/csv")
    assert status == 200 and content_type.startswith("text/csv")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["aadObjectId", "teamsId", "name", "conversationId", "status", "reason", "attempts", "sentAt",
                       "acknowledgedAt"]
    by_conversation = {row[3]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert len(rows) == 131 and sorted(by_conversation) == conversations, "each recipient once, across pages"
    for n, name in enumerate(HOSTILE):
        shown = by_conversation[f"a:conv-{n:04d}"]["name"]
        assert shown == (f"'{name}" if name[0] in "=+-@\t" else name), (name, shown)
    blocked = by_conversation["a:conv-0005"]
    assert blocked["status"] == "cancelled" and "ConversationBlockedByUser" in blocked["reason"], blocked
    ok = by_conversation["a:conv-0007"]
    assert ok["status"] == "sent" and ok["aadObjectId"] == "aad-0007" and ok["teamsId"] == "29:user-conv-0007"
    assert ok["sentAt"].endswith("Z") and ok["attempts"] == "1" and ok["acknowledgedAt"] == ""
    assert by_conversation["a:conv-0003"]["acknowledgedAt"].startswith("2026-01-01T")

    status, content_type, text = await report(http, app, body["batchId"], "application/json")
    assert status == 200 and content_type.startswith("application/x-ndjson")
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 130 and [r["name"] for r in lines[:len(HOSTILE)]] == HOSTILE, "JSON keeps names as they are"
    assert lines[5]["status"] == "cancelled" and lines[7]["attempts"] == 1 and lines[7]["acknowledgedAt"] is None


async def test_the_report_is_guarded_and_names_what_is_wrong(
    app: BotApplication, http: aiohttp.ClientSession,
) -> None:
    assert (await report(http, app, "0" * 32, "text/csv", headers={}))[0] == 401
    assert (await report(http, app, "0" * 32, "text/csv", headers={"Authorization": "Bearer nope"}))[0] == 401
    assert (await report(http, app, "0" * 32, "text/csv"))[0] == 404
    for bad in ("xyz", "0" * 31, "G" * 32, "%0a" + "0" * 29):
        status, _, text = await report(http, app, bad, None)
        assert status == 400 and "batchId" in text, (bad, status, text)


# ---- schedule and cancel -----------------------------------------------------------------------------------


async def cancel(http: aiohttp.ClientSession, app: BotApplication, batch_id: str,
                 headers: dict[str, str] = AUTH) -> tuple[int, dict[str, Any]]:
    async with http.delete(bot_url(app, f"/api/notify/batches/{batch_id}"), headers=headers) as response:
        return response.status, await response.json()


def sends(double: ConnectorDouble) -> int:
    return len([r for r in double.find(op="send") if r.status and r.status < 300])


async def rounds(app: BotApplication, clock: FakeClock, count: int = 5) -> None:
    """Let time pass and the worker do what it would: claim, send, write outcomes."""
    for _ in range(count):
        clock.advance(2)
        await app.scheduler.run_due()
        await app.worker.maintain()
        app.worker.pump()
        await app.worker.idle()
        await app.worker.flush()


async def test_a_scheduled_notice_waits_for_its_minute_survives_a_restart_and_goes_once(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot(notify_token=TOKEN, price_source="none")
    ada = Chat(http, app, double)
    await ada.install()
    await ada.settle()
    before = len(ada.texts())  # the welcome
    status, body = await notify(http, app, {"to": {"conversations": ["dm-ada"]}, "text": "Town hall starts",
                                            "sendAt": "2026-01-01T03:00:42+01:00"})  # 02:00:42 UTC → 02:00
    assert status == 202 and body["state"] == "scheduled" and "ids" not in body, body
    progress = await batch(http, app, body["batchId"])
    assert progress["state"] == "scheduled" and progress["sendAt"] == "2026-01-01T02:00:00Z"
    fake_clock.advance(3600 + 59 * 60 - 1)  # 01:58:59
    await rounds(app, fake_clock, 1)  # 01:59:01: not yet
    assert len(ada.texts()) == before and (await batch(http, app, body["batchId"]))["state"] == "scheduled"
    await app.stop()
    fake_clock.advance(120)  # down over its time
    again = await start_bot(notify_token=TOKEN, price_source="none")
    await rounds(again, fake_clock, 3)
    await rounds(again, fake_clock, 3)
    assert [t for t in Chat(http, again, double).texts()[before:]] == ["Town hall starts"], "once, after the restart"
    done = await batch(http, again, body["batchId"])
    assert done["state"] == "finished" and done["counts"] == {"sent": 1}


@pytest.mark.parametrize(("send_at", "expires_at"), [
    ("2026-01-01T09:00:00", None),  # no zone
    ("tomorrow", None), ("2026-13-01T09:00:00Z", None), (1767258000, None), ("", None),
    ("2028-01-01T09:00:00Z", None),  # over a year ahead
    ("2026-01-02T09:00:00Z", "2026-01-02T08:00:00Z"),  # after it expires
])
async def test_send_at_needs_a_zone_and_a_time_that_makes_sense(
    app: BotApplication, http: aiohttp.ClientSession, send_at: Any, expires_at: str | None,
) -> None:
    body: dict[str, Any] = {"to": {"all": True}, "text": "x", "sendAt": send_at}
    if expires_at:
        body["expiresAt"] = expires_at
    status, answer = await notify(http, app, body)
    assert status == 400 and answer["error"]["field"] == "sendAt", answer


async def test_cancelling_a_scheduled_notice_means_it_never_goes(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    ada = Chat(http, app, double)
    await ada.install()
    await ada.settle()
    before = sends(double)
    status, body = await notify(http, app, {"to": {"all": True}, "text": "Never", "sendAt": "2026-01-01T00:10:00Z"})
    assert status == 202
    status, answer = await cancel(http, app, body["batchId"])
    assert status == 200 and answer["state"] == "cancelled" and answer["alreadyCancelled"] is False
    fake_clock.advance(3600)
    await rounds(app, fake_clock)
    assert sends(double) == before
    progress = await batch(http, app, body["batchId"])
    assert progress["state"] == "cancelled" and progress["cancelledAt"] == "2026-01-01T00:00:00Z"
    again = await cancel(http, app, body["batchId"])
    assert again == (200, {**answer, "alreadyCancelled": True})
    async with http.get(bot_url(app, "/metrics")) as response:
        assert 'bot_notice_actions_total{action="cancelled"} 1.0' in await response.text()


async def test_cancelling_while_sending_stops_everything_not_sent_and_nothing_goes_after_the_answer(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    await seeded_with_names(app, double, 130)  # one tenant: 50 sends per second
    app.broadcasts.page = 50
    double.hold_next(3, ops={"send"})  # three sends stay in flight while the cancel comes
    status, body = await notify(http, app, {"to": {"all": True}, "text": "Evacuate"})
    assert status == 202
    await expand(app, http, body["batchId"])
    progress = await batch(http, app, body["batchId"])
    assert progress["state"] == "sending"
    now = fake_clock.now().timestamp()
    estimate = datetime.fromisoformat(progress["estimatedFinishAt"]).timestamp()
    assert now < estimate <= now + 130 / 50, "the rows still to send, at the tenant's 50 per second"
    await app.worker.maintain()
    app.worker.pump()
    for _ in range(500):
        if double.held_count == 3:
            break
        await asyncio.sleep(0.01)
    assert double.held_count == 3
    cancelling = asyncio.create_task(cancel(http, app, body["batchId"]))
    for _ in range(50):
        await asyncio.sleep(0.01)  # the cancel reaches the bot and waits for the sends in flight
    assert not cancelling.done(), "the cancel is answered only once the sends in flight have ended"
    double.release_held()
    status, answer = await cancelling
    answered = sends(double)
    assert status == 200 and 3 <= answered < 130 and answer["cancelled"] == 130 - answered, (answered, answer)
    await rounds(app, fake_clock, 10)
    assert sends(double) == answered, "nothing is sent after the cancel was answered"
    done = await batch(http, app, body["batchId"])
    assert done["state"] == "cancelled" and done["counts"] == {"sent": answered, "cancelled": 130 - answered}
    assert (await cancel(http, app, body["batchId"]))[0] == 200


async def test_a_finished_notice_cannot_be_cancelled_and_cancel_is_guarded(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    ada = Chat(http, app, double)
    await ada.install()
    status, body = await notify(http, app, {"to": {"conversations": ["dm-ada"]}, "text": "Done"})
    await rounds(app, fake_clock, 2)
    status, answer = await cancel(http, app, body["batchId"])
    assert status == 409 and "finished" in answer["error"]["message"]
    assert (await cancel(http, app, body["batchId"], headers={}))[0] == 401
    assert (await cancel(http, app, "0" * 32))[0] == 404
    assert (await cancel(http, app, "not-a-batch"))[0] == 400


# ---- dry run -----------------------------------------------------------------------------------------------


async def test_a_dry_run_says_whom_a_notice_would_reach_and_sends_nothing(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    await seeded_with_names(app, double, 15)
    await app.references.mark_inactive("a:conv-0014", "uninstalled")
    status, answer = await notify(http, app, {"to": {"all": True}, "text": "x", "dryRun": True, "acknowledge": True})
    assert status == 200 and answer["dryRun"] is True and answer["requested"] == 14
    assert [s["conversationId"] for s in answer["sample"]] == [f"a:conv-{n:04d}" for n in range(10)]
    assert answer["sample"][1]["name"] == HOSTILE[1] and answer["sample"][1]["aadObjectId"] == "aad-0001"
    status, answer = await notify(http, app, {
        "to": {"conversations": ["a:conv-0001", "a:conv-0014", "a:nobody"]}, "text": "x", "dryRun": True,
        "sendAt": "2026-01-01T10:00:00Z"})
    assert status == 200 and answer["requested"] == 1 and answer["sample"] == [
        {"conversationId": "a:conv-0001", "tenantId": "tenant-1", "userId": None}]
    assert answer["unknown"]["conversations"] == ["a:nobody"] and answer["inactive"]["conversations"] == ["a:conv-0014"]
    await rounds(app, fake_clock, 2)
    assert await app.db.fetchone("SELECT 1 AS x FROM outbox") is None
    assert await app.db.fetchone("SELECT 1 AS x FROM broadcasts") is None and sends(double) == 0


@pytest.mark.parametrize("value", ["true", 1, None])
async def test_dry_run_must_be_true_or_false(app: BotApplication, http: aiohttp.ClientSession, value: Any) -> None:
    status, answer = await notify(http, app, {"to": {"all": True}, "text": "x", "dryRun": value})
    assert status == 400 and answer["error"]["field"] == "dryRun"


# ---- recall ------------------------------------------------------------------------------------------------


async def recall(http: aiohttp.ClientSession, app: BotApplication, batch_id: str,
                 headers: dict[str, str] = AUTH) -> tuple[int, dict[str, Any]]:
    async with http.post(bot_url(app, f"/api/notify/batches/{batch_id}/recall"), headers=headers) as response:
        return response.status, await response.json()


def deletes(double: ConnectorDouble) -> int:
    return len([r for r in double.find(op="delete") if r.status and r.status < 300])


async def test_recall_deletes_the_sent_messages_within_the_tenants_budget_and_after_a_429(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    await seeded_with_names(app, double, 60)  # one tenant: 50 Bot Connector calls per second
    status, body = await notify(http, app, {"to": {"all": True}, "text": "Sent by mistake"})
    assert status == 202
    await deliver_all(app, fake_clock)
    await app.worker.flush()
    assert sends(double) == 60
    fake_clock.advance(60)  # the sends have left the rate windows
    double.fail_next("throttled", 1, conversation_id="a:conv-0000", ops={"delete"})  # Retry-After: 1
    status, answer = await recall(http, app, body["batchId"])
    assert status == 202 and answer["toRecall"] == 60 and answer["state"] == "recalling"
    await app.scheduler.run_due()
    assert deletes(double) == 0, "the first delete was throttled: the job comes back after its Retry-After"
    fake_clock.advance(1)
    await app.scheduler.run_due()
    assert 0 < deletes(double) <= 50, "no more than the tenant's budget in one second"
    for _ in range(5):
        fake_clock.advance(1)
        await app.scheduler.run_due()
    assert deletes(double) == 60 and len({r.conversation_id for r in double.find(op="delete") if r.status == 200}) == 60
    assert all(double.activity(r.conversation_id, r.activity_id or "") is None for r in double.find(op="delete"))
    progress = await batch(http, app, body["batchId"])
    assert progress["recalled"] == 60
    _, _, text = await report(http, app, body["batchId"], None)
    assert {json.loads(line)["status"] for line in text.splitlines()} == {"recalled"}
    again = await recall(http, app, body["batchId"])
    await app.scheduler.run_due()
    assert again[1]["toRecall"] == 0 and deletes(double) == 60, "a second recall deletes nothing again"
    async with http.get(bot_url(app, "/metrics")) as response:
        assert 'bot_notice_actions_total{action="recalled"} 60.0' in await response.text()


async def test_recall_while_sending_cancels_the_rest_and_is_guarded(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    ada = Chat(http, app, double)
    await ada.install()
    status, body = await notify(http, app, {"to": {"conversations": ["dm-ada"]}, "text": "Later",
                                            "sendAt": "2026-01-01T08:00:00Z"})
    status, answer = await recall(http, app, body["batchId"])
    assert status == 202 and answer["toRecall"] == 0
    assert (await batch(http, app, body["batchId"]))["state"] == "cancelled", "nothing more goes"
    assert (await recall(http, app, body["batchId"], headers={}))[0] == 401
    assert (await recall(http, app, "0" * 32))[0] == 404
    assert (await recall(http, app, "zz"))[0] == 400


# ---- channels ----------------------------------------------------------------------------------------------

CHANNEL = "19:deals@thread.tacv2"
CHANNEL_DATA = {"tenant": {"id": "t1"}, "team": {"id": "19:team@thread.tacv2"}, "channel": {"id": CHANNEL}}


@pytest.mark.parametrize("listed", [1, 101], ids=["at-once", "in-pages"])
async def test_a_notice_to_channels_posts_once_in_each_channel_and_nowhere_else(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock, listed: int,
) -> None:
    ada = Chat(http, app, double)
    await ada.say("help")
    member = Chat(http, app, double, conversation_id=f"{CHANNEL};messageid=1001", kind="channel",
                  channel_data=CHANNEL_DATA)
    await member.say("help")  # the bot now knows the channel (from a thread of it)
    await ada.settle()
    unknown = [f"19:other-{n}@thread.tacv2" for n in range(listed - 1)]
    status, body = await notify(http, app, {"to": {"channels": [CHANNEL, "dm-ada", *unknown]}, "text": "Deals!"})
    assert status == 202, body
    if listed > 100:
        await expand(app, http, body["batchId"])
    else:
        assert body["unknown"]["conversations"] == ["dm-ada"], "a 1:1 chat is not a channel"
    await deliver_all(app, fake_clock)
    posts = [a for a in double.sent_activities(CHANNEL) if a.get("text") == "Deals!"]
    assert len(posts) == 1, "one new post in the channel"
    assert "Deals!" not in ada.texts()
    progress = await batch(http, app, body["batchId"])
    assert progress["counts"] == {"sent": 1} and progress["unknown"] == listed


async def test_a_thread_is_not_a_channel(app: BotApplication, http: aiohttp.ClientSession) -> None:
    status, answer = await notify(http, app, {"to": {"channels": [f"{CHANNEL};messageid=1"]}, "text": "x"})
    assert status == 400 and answer["error"]["field"] == "to.channels.0"
    status, answer = await notify(http, app, {"to": {"channels": [CHANNEL], "users": ["29:a"]}, "text": "x"})
    assert status == 400 and answer["error"]["field"] == "to"
