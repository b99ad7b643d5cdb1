"""Time zones, quiet hours and the daily digest over HTTP, on a fake clock (no sleeps).

The clock starts at 2026-01-01 00:00 UTC = 01:00 in Berlin (CET). Notifications come from the real sources
(pushed prices) or are enqueued through `ProactiveMessages` as /api/notify would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from state.clock import FakeClock
from state.model import deferred_key
from state.outbox import OutboxItem
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble

TOKEN = "tok"
BERLIN = "Europe/Berlin"
SETTINGS = {"notify_token": TOKEN, "prices_token": TOKEN, "price_source": "none", "alert_coalesce_seconds": 2.0}


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


async def say(chat: Chat, text: str, timezone: str | None = BERLIN) -> None:
    fields: dict[str, Any] = {"text": text}
    if timezone is not None:
        fields["localTimezone"] = timezone
    assert await chat.post(chat.activity("message", **fields)) == 200
    await chat.settle()


@pytest.fixture
async def chat(start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble) -> Chat:
    app = await start_bot(**SETTINGS)
    chat = Chat(http, app, double)
    await chat.install()
    await chat.settle()
    return chat


def note(text: str, **kw: Any) -> OutboxItem:
    return OutboxItem(payload={"type": "message", "text": text}, conversation_id="dm-ada", tenant_id="t1", **kw)


async def tick(app: BotApplication, clock: FakeClock, seconds: float, chat: Chat) -> None:
    clock.advance(seconds)
    await app.scheduler.run_due()
    await chat.settle()


def count(chat: Chat, needle: str) -> int:
    return sum(needle in t for t in chat.texts())


async def push(chat: Chat, price: str) -> None:
    body = {"product": "gadget", "price": price, "currency": "USD", "source": "Acme Store"}
    async with chat.http.post(bot_url(chat.app, "/api/prices"), json=body,
                              headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 202


# ---- time zones ------------------------------------------------------------------------------------------


async def test_time_zone_comes_from_teams_and_invalid_zones_are_ignored(chat: Chat) -> None:
    await say(chat, "settings", timezone=None)
    assert "UTC" in chat.texts()[-1] and "hasn't told me yours yet" in chat.texts()[-1]
    await say(chat, "settings")
    assert "Europe/Berlin (01:00 CET now; from Teams)" in chat.texts()[-1]
    await say(chat, "settings", timezone="Mars/Olympus_Mons")  # ignored, not an error
    assert "Europe/Berlin (01:00 CET now" in chat.texts()[-1]
    await say(chat, "mute 2h")
    assert "until 2026-01-01 03:00 CET" in chat.texts()[-1]


async def test_a_chosen_time_zone_wins_over_teams_until_auto(chat: Chat) -> None:
    await say(chat, "timezone america/new_york")
    assert "**America/New_York**" in chat.texts()[-1] and "19:00 EST" in chat.texts()[-1]
    await say(chat, "settings")  # Teams still says Berlin: the choice stays
    assert "America/New_York (19:00 EST now; you chose it)" in chat.texts()[-1]
    await say(chat, "timezone Atlantis/Lost")
    assert "I don't know the time zone `Atlantis/Lost`, so I kept **America/New_York**" in chat.texts()[-1]
    await say(chat, "timezone auto")
    await say(chat, "settings")
    assert "Europe/Berlin (01:00 CET now; from Teams)" in chat.texts()[-1]


async def test_alert_and_snooze_times_are_in_the_users_zone(chat: Chat, fake_clock: FakeClock) -> None:
    await say(chat, "watch gadget below 10")
    await push(chat, "9.5")
    await tick(chat.app, fake_clock, 3, chat)
    [card] = [c for c in chat.cards() if c["body"][0].get("text") == "Price alert"]
    facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert facts["Seen at"] == "2026-01-01 01:00 CET"
    opt_out = card["body"][-1]["text"]
    assert "quiet 22:00-07:00" in opt_out and "digest daily 09:00" in opt_out and "settings" in opt_out
    snooze = next(a for a in card["actions"] if a["title"] == "Snooze 1 hour")
    await chat.press(snooze["data"])
    await chat.settle()
    assert "Snoozed until 2026-01-01 02:00 CET." in " ".join(chat.texts())


# ---- quiet hours -----------------------------------------------------------------------------------------


async def test_quiet_hours_hold_notifications_and_send_one_digest_when_they_end(
    chat: Chat, fake_clock: FakeClock
) -> None:
    await say(chat, "quiet 22:00-07:00")  # it is 01:00 in Berlin: inside
    assert "Quiet hours on: 22:00–07:00 (Europe/Berlin)" in chat.texts()[-1]
    before = len(chat.texts())
    [first] = await chat.app.proactive.enqueue([note("Gizmo is back in stock")])
    [second] = await chat.app.proactive.enqueue([note("Doohickey restocked")])
    [result] = await chat.app.proactive.enqueue([note("Your analysis is ready", category="result")])
    [urgent] = await chat.app.proactive.enqueue([note("Security alert", priority=1)])
    assert (first.decision.action, first.decision.reason) == ("hold", "quiet hours")
    assert second.decision.action == "hold"
    assert result.decision.action == "deliver" and urgent.decision.action == "deliver"
    await chat.settle()
    assert [t for t in chat.texts()[before:]] == ["Your analysis is ready", "Security alert"]

    await tick(chat.app, fake_clock, 5 * 3600 + 59 * 60, chat)  # 06:59 CET: still quiet
    assert count(chat, "Gizmo") == 0
    await tick(chat.app, fake_clock, 60, chat)  # 07:00 CET
    digests = [t for t in chat.texts() if "While your quiet hours were on" in t]
    assert len(digests) == 1 and "2 updates" in digests[0]
    assert "Gizmo is back in stock" in digests[0] and "Doohickey restocked" in digests[0]
    await tick(chat.app, fake_clock, 24 * 3600, chat)
    assert count(chat, "Gizmo") == 1


async def test_outside_quiet_hours_notifications_go_at_once(chat: Chat) -> None:
    await say(chat, "quiet 13:00-14:00")
    [admission] = await chat.app.proactive.enqueue([note("Gizmo is back in stock")])
    assert admission.decision.action == "deliver"


async def test_quiet_off_releases_what_they_held(chat: Chat) -> None:
    await say(chat, "quiet 22:00-07:00")
    await chat.app.proactive.enqueue([note("Gizmo is back in stock")])
    await say(chat, "quiet off")
    assert "Quiet hours are off" in " ".join(chat.texts())
    assert count(chat, "Gizmo is back in stock") == 1
    assert await chat.app.scheduler.get(key=deferred_key("dm-ada")) is None


async def test_quiet_hours_end_mid_topic_then_the_topic_end_releases(chat: Chat, fake_clock: FakeClock) -> None:
    await say(chat, "quiet 22:00-07:00")
    await chat.app.proactive.enqueue([note("Gizmo is back in stock")])
    await tick(chat.app, fake_clock, 5 * 3600, chat)  # 06:00 CET
    await say(chat, "watch")  # mid-topic when the quiet hours end
    await tick(chat.app, fake_clock, 3600, chat)  # 07:00 CET
    assert count(chat, "Gizmo") == 0, "nothing interrupts the open question"
    await say(chat, "cancel")
    assert count(chat, "Gizmo") == 1 and count(chat, "While your quiet hours were on") == 1


async def test_a_price_alert_in_quiet_hours_keeps_its_previous_price_in_the_digest(
    chat: Chat, fake_clock: FakeClock
) -> None:
    await say(chat, "watch gadget below 10")
    await say(chat, "quiet 22:00-07:00")
    await push(chat, "12")
    await push(chat, "9.5")  # both within the coalescing window
    await tick(chat.app, fake_clock, 3, chat)
    assert count(chat, "9.50") == 0
    await tick(chat.app, fake_clock, 6 * 3600, chat)
    [digest] = [t for t in chat.texts() if "While your quiet hours were on" in t]
    assert "gadget: 12.00 → 9.50 USD (\u221220.8%)" in digest and "Stop watching" in digest


async def test_quiet_hours_and_held_items_survive_a_restart(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    app = await start_bot(**SETTINGS)
    chat = Chat(http, app, double)
    await chat.install()
    await say(chat, "quiet 22:00-07:00")
    await app.proactive.enqueue([note("Gizmo is back in stock")])
    await app.stop()
    fake_clock.advance(6 * 3600)  # 07:00 CET while the bot is down
    again = await start_bot(**SETTINGS)
    chat = Chat(http, again, double)
    await again.scheduler.run_due()
    await chat.settle()
    assert count(chat, "While your quiet hours were on") == 1 and count(chat, "Gizmo") == 1
    settings = await again.preferences.settings("user:29:ada")
    assert settings.quiet is not None and settings.quiet.describe() == "22:00–07:00"


# ---- daily digest ----------------------------------------------------------------------------------------


async def test_daily_digest_sends_one_message_a_day_at_local_time(chat: Chat, fake_clock: FakeClock) -> None:
    await say(chat, "digest daily 09:00")
    assert "every day at 09:00 (Europe/Berlin)" in chat.texts()[-1]
    for text in ("Gizmo is back in stock", "Doohickey restocked", "Widget on sale"):
        [admission] = await chat.app.proactive.enqueue([note(text)])
        assert (admission.decision.action, admission.decision.reason) == ("hold", "daily digest")
        await tick(chat.app, fake_clock, 3600, chat)
    assert count(chat, "Gizmo") == 0
    await tick(chat.app, fake_clock, 5 * 3600, chat)  # 09:00 CET
    [digest] = [t for t in chat.texts() if "Your daily digest" in t]
    assert "3 updates" in digest and "Widget on sale" in digest
    await chat.app.proactive.enqueue([note("Thingamajig is cheaper")])
    await tick(chat.app, fake_clock, 23 * 3600, chat)
    assert count(chat, "Thingamajig") == 0
    await tick(chat.app, fake_clock, 3600, chat)  # the next day at 09:00
    assert count(chat, "Your daily digest: 1 update") == 1 and count(chat, "Thingamajig") == 1


async def test_digest_off_and_moving_the_digest_earlier_release_sooner(chat: Chat, fake_clock: FakeClock) -> None:
    await say(chat, "digest daily 09:00")
    await chat.app.proactive.enqueue([note("Gizmo is back in stock")])
    await say(chat, "digest daily 02:00")  # earlier than 09:00: the held item now goes at 02:00 CET
    await tick(chat.app, fake_clock, 3600, chat)
    assert count(chat, "Your daily digest: 1 update") == 1
    await chat.app.proactive.enqueue([note("Doohickey restocked")])
    await say(chat, "digest off")
    assert count(chat, "Doohickey restocked") == 1


async def test_group_chat_quiet_hours_apply_to_the_conversation(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    app = await start_bot(**SETTINGS)
    group = Chat(http, app, double, conversation_id="19:group@thread.v2", kind="groupChat")
    await group.install()
    await say(group, "quiet 22:00-07:00")
    await say(group, "settings")
    assert "apply to everyone in this conversation" in group.texts()[-1]
    [held] = await app.proactive.enqueue([OutboxItem(payload={"type": "message", "text": "Team news"},
                                                     conversation_id="19:group@thread.v2", tenant_id="t1")])
    assert held.decision.action == "hold"
    await tick(app, fake_clock, 6 * 3600, group)  # 07:00 in Berlin, the zone of whoever set them
    assert count(group, "Team news") == 1
