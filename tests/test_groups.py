"""Group chats and channels over HTTP: two people in one group chat, and a channel with two threads.

Each person has a topic of their own: Ada's open question holds only what is addressed to Ada (her alert,
her analysis result), never Bob's items or notifications for the whole conversation. A channel is one
conversation however many threads the bot hears from: one record, one welcome, one mute, one post per
notification, one send budget; turn replies still answer in their thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from state.clock import FakeClock
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble

TOKEN = "tok"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GROUP = "19:group-chat@thread.v2"
TEAM, CHANNEL = "19:team@thread.tacv2", "19:deals@thread.tacv2"
THREAD1, THREAD2 = f"{CHANNEL};messageid=1001", f"{CHANNEL};messageid=1002"
NAMED = {"tenant": {"id": "t1"}, "team": {"id": TEAM, "name": "Pricing"}, "channel": {"id": CHANNEL, "name": "Deals"}}
UNNAMED = {"tenant": {"id": "t1"}, "team": {"id": TEAM}, "channel": {"id": CHANNEL}}  # what most activities carry


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


@pytest.fixture
async def app(start_bot: StartBot) -> BotApplication:
    return await start_bot(notify_token=TOKEN, prices_token=TOKEN, price_source="none", analyze_seconds=30.0,
                           progress_delays=(5.0,), alert_coalesce_seconds=2.0)


MESSAGE = "application/vnd.microsoft.activity.message"
CARD = "application/vnd.microsoft.card.adaptive"


async def invoke(person: Chat, action: dict[str, Any]) -> dict[str, Any]:
    """Press an Action.Execute button (or a card's refresh) as `person`: the invoke's answer."""
    activity = person.activity("invoke", name="adaptiveCard/action", value={
        "action": {"type": "Action.Execute", "verb": action.get("verb"), "data": action["data"]},
        "trigger": "manual"})
    async with person.http.post(bot_url(person.app), json=activity) as response:
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


def people(http: aiohttp.ClientSession, app: BotApplication, double: ConnectorDouble, conversation_id: str,
           kind: str, channel_data: dict[str, Any] | None = None) -> tuple[Chat, Chat]:
    ada = Chat(http, app, double, conversation_id, "29:ada", kind, channel_data)
    bob = Chat(http, app, double, conversation_id, "29:bob", kind, channel_data, user_name="Bob Builder")
    return ada, bob


async def settle(app: BotApplication) -> None:
    """Deliver everything that may go now (until the limits or the queue say nothing more may)."""
    while app.worker.pump():
        await app.worker.idle()
    await app.worker.idle()
    await app.worker.flush()


async def tick(app: BotApplication, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    await app.scheduler.run_due()
    await settle(app)


async def push(http: aiohttp.ClientSession, app: BotApplication, price: Any, product: str = "gadget") -> None:
    body = {"product": product, "price": price, "currency": "USD", "source": "Acme Store"}
    async with http.post(bot_url(app, "/api/prices"), json=body, headers=AUTH) as response:
        assert response.status == 202


async def notify(http: aiohttp.ClientSession, app: BotApplication, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(bot_url(app, "/api/notify"), json=body, headers=AUTH) as response:
        assert response.status == 202
        result: dict[str, Any] = await response.json()
        return result


def posts(double: ConnectorDouble, conversation_id: str) -> list[dict[str, Any]]:
    """What the bot posted as new messages in a conversation (proactive sends, not turn replies)."""
    return [r.body for r in double.find(op="send", conversation_id=conversation_id) if r.status and r.status < 300]


def alerts_for(double: ConnectorDouble, conversation_id: str, user_id: str) -> list[dict[str, Any]]:
    return [p for p in posts(double, conversation_id)
            if "Price alert" in str(p.get("attachments")) and mentioned(p) == user_id]


def mentioned(activity: dict[str, Any]) -> str | None:
    """The user an activity @mentions, checked the way Teams renders it: entity and `<at>` text agree."""
    for entity in activity.get("entities") or []:
        if entity.get("type") == "mention":
            assert entity["text"] in activity.get("text", ""), "the mention's text must appear in the message"
            assert entity["text"] == f"<at>{entity['mentioned']['name']}</at>"
            return str(entity["mentioned"]["id"])
    return None


# ---- a group chat with two people ----------------------------------------------------------------------


async def test_group_chat_welcome_says_who_added_the_bot_only_when_teams_says(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble
) -> None:
    ada, _ = people(http, app, double, GROUP, "groupChat")
    ada.user_name = ""  # Teams often leaves the installer's name out
    await ada.install()
    await settle(app)
    [welcome] = posts(double, GROUP)
    assert "Price Watch was added to this group chat" in str(welcome)


async def test_group_chat_one_persons_open_question_holds_only_their_own_alert(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    ada, bob = people(http, app, double, GROUP, "groupChat")
    await ada.install()
    await ada.say("watch gadget below 10")
    await bob.say("watch gadget below 20")
    await ada.say("watch")  # Ada is now mid-topic: "Which product?"
    await bob.say("help")  # Bob's turn neither opens nor ends Ada's topic
    await push(http, app, 9)
    await tick(app, fake_clock, 3)
    [bobs] = alerts_for(double, GROUP, "29:bob")
    assert "<at>Bob Builder</at>" in bobs["text"] and "Bob Builder asked to hear" in str(bobs)
    assert alerts_for(double, GROUP, "29:ada") == [], "Ada's alert waits for the end of her topic"

    result = await notify(http, app, {"to": {"conversations": [GROUP]}, "text": "Office closed on Friday"})
    await settle(app)
    assert result["queued"] == 1 and any(p.get("text") == "Office closed on Friday" for p in posts(double, GROUP)), \
        "an item for the whole group chat goes out at once, whoever is mid-topic"

    await bob.say("watch")  # Bob's own topic opens and ends: nothing of Ada's is released
    await bob.say("cancel")
    await settle(app)
    assert alerts_for(double, GROUP, "29:ada") == []
    await ada.say("cancel")
    await settle(app)
    [adas] = alerts_for(double, GROUP, "29:ada")
    assert "<at>Ada Lovelace</at>" in adas["text"] and "9.00 USD" in str(adas)


@pytest.mark.parametrize(("where", "kind", "channel_data", "posted_to"), [
    (GROUP, "groupChat", None, GROUP), (THREAD1, "channel", UNNAMED, CHANNEL)], ids=["group chat", "channel"])
async def test_group_chat_alert_buttons_act_only_for_the_owner(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
    where: str, kind: str, channel_data: dict[str, Any] | None, posted_to: str,
) -> None:
    ada, bob = people(http, app, double, where, kind, channel_data)
    await ada.say("watch gadget below 10")
    await push(http, app, 9)
    await tick(app, fake_clock, 3)
    [alert] = alerts_for(double, posted_to, "29:ada")
    card = alert["attachments"][0]["content"]
    assert all(a["type"] == "Action.OpenUrl" for a in card.get("actions", [])), "everyone's view has no buttons"
    assert card["refresh"]["userIds"] == ["29:ada"], "the owner's own view has them (Universal Actions)"
    owner_view = await invoke(ada, card["refresh"]["action"])
    stop = next(a for a in owner_view["value"]["actions"] if a["title"] == "Stop watching")
    assert stop["type"] == "Action.Execute"
    assert (await invoke(bob, card["refresh"]["action"]))["type"] == MESSAGE, "bob's refresh shows no buttons"
    answer = await invoke(bob, stop)
    assert answer["type"] == MESSAGE and "someone else's watch" in answer["value"]
    await bob.press(stop["data"])
    assert "someone else's watch" in bob.texts()[-1] and "<at>Bob Builder</at>" in bob.texts()[-1]
    assert [w.product for w in await app.watcher.list("29:ada")] == ["gadget"]
    assert double.find(op="update") == [], "no press of bob's changed a card"
    answer = await invoke(ada, stop)
    assert answer["type"] == CARD and "Stopped watching gadget" in str(answer["value"])


async def test_group_chat_analysis_result_waits_only_for_the_person_who_asked(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    ada, bob = people(http, app, double, GROUP, "groupChat")
    await push(http, app, 10)
    await ada.say("analyze gadget")
    await bob.say("analyze gadget")
    await ada.say("watch")  # mid-topic when both results are due
    await tick(app, fake_clock, 31)
    results = [p for p in posts(double, GROUP) if "Analysis of gadget is ready" in str(p)]
    assert [mentioned(p) for p in results] == ["29:bob"]
    await ada.say("gadget")
    await ada.say("below 5")  # the answer ends her topic
    await tick(app, fake_clock, 2)  # the chat's replies used its 8-per-2-s window (replies and sends share it)
    results = [p for p in posts(double, GROUP) if "Analysis of gadget is ready" in str(p)]
    assert [mentioned(p) for p in results] == ["29:bob", "29:ada"]


async def test_group_chat_several_held_items_arrive_as_one_digest_that_mentions_their_owner(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    ada, _ = people(http, app, double, GROUP, "groupChat")
    await ada.say("watch gadget below 10")
    await ada.say("watch gizmo below 10")
    await ada.say("watch")
    await push(http, app, 9)
    await push(http, app, 8, product="gizmo")
    await tick(app, fake_clock, 3)
    await ada.say("cancel")
    await settle(app)
    [digest] = [p for p in posts(double, GROUP) if "While we were talking" in str(p)]
    assert mentioned(digest) == "29:ada" and "gadget" in str(digest) and "gizmo" in str(digest)
    assert "<at>" not in str(digest["attachments"]), "a card cannot render a mention: the digest shows names"


# ---- a channel with two threads ------------------------------------------------------------------------


async def test_a_channel_is_one_conversation_whatever_thread_the_bot_hears_from(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble
) -> None:
    installer = Chat(http, app, double, CHANNEL, "29:ada", "channel", NAMED)
    await installer.post(installer.activity("conversationUpdate", membersAdded=[{"id": "28:bot"}]))
    ada, _ = people(http, app, double, THREAD1, "channel", UNNAMED)
    _, bob = people(http, app, double, THREAD2, "channel", UNNAMED)
    await ada.say("help")
    await bob.say("list")
    await ada.post(ada.activity("installationUpdate", action="add"))  # Teams may say it again, from a thread
    await settle(app)

    [welcome] = posts(double, CHANNEL)
    assert "Ada Lovelace added Price Watch to the **Pricing** team (channel **Deals**)" in str(welcome)
    assert [r.op for r in double.find(conversation_id=THREAD1)] == ["reply"], "a turn's answer stays in its thread"
    assert [r.op for r in double.find(conversation_id=THREAD2)] == ["reply"]
    [record] = await app.references.all()
    assert (record.conversation_id, record.conversation_type, record.team_id, record.team_name,
            record.channel_name, record.user_id) == (CHANNEL, "channel", TEAM, "Pricing", "Deals", "29:ada")

    result = await notify(http, app, {"to": {"all": True}, "text": "Maintenance at 18:00 UTC"})
    await settle(app)
    assert result["queued"] == 1
    assert [p.get("text") for p in posts(double, CHANNEL)][1:] == ["Maintenance at 18:00 UTC"], \
        "posted once, as a new message in the channel"
    assert [r.op for r in double.find(conversation_id=THREAD1)] == ["reply"]

    await notify(http, app, {"to": {"conversations": [THREAD2]}, "text": "About this thread"})
    await settle(app)
    assert [p.get("text") for p in posts(double, THREAD2)] == ["About this thread"], "a thread's own id answers there"

    await ada.say("mute")  # in thread 1: mutes the channel, every thread
    result = await notify(http, app, {"to": {"conversations": [CHANNEL, THREAD2]}, "text": "Muted?"})
    assert (result["queued"], result["muted"]) == (0, 2)


async def test_channel_members_topics_span_threads_and_hold_only_their_own_alerts(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    ada1, bob2 = people(http, app, double, THREAD1, "channel", UNNAMED)[0], people(
        http, app, double, THREAD2, "channel", UNNAMED)[1]
    ada2 = Chat(http, app, double, THREAD2, "29:ada", "channel", UNNAMED)
    await ada1.say("watch gadget below 10")
    await bob2.say("watch gadget below 20")
    await ada1.say("watch")  # Ada's open question, in thread 1
    await bob2.say("help")
    await ada2.say("help")  # Ada in thread 2: no topic there, and her thread-1 question stays open
    await push(http, app, 9)
    await tick(app, fake_clock, 3)
    assert [mentioned(p) for p in posts(double, CHANNEL)] == ["29:bob"], "Bob's alert: a new post in the channel"
    await ada2.say("list")
    await settle(app)
    assert alerts_for(double, CHANNEL, "29:ada") == []
    await ada1.say("cancel")
    await settle(app)
    assert len(alerts_for(double, CHANNEL, "29:ada")) == 1
    assert {r.op for r in double.find(conversation_id=THREAD1)} == {"reply"}, "alerts are never thread replies"


async def test_threads_of_a_channel_share_its_send_budget(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    ada, _ = people(http, app, double, THREAD1, "channel", NAMED)
    await ada.say("help")  # the bot learns the channel
    fake_clock.advance(61)  # nothing sent so far counts in the 1 s, 2 s or 30 s windows
    for i in range(10):
        await notify(http, app, {"to": {"conversations": [THREAD1, THREAD2]}, "text": f"update {i}"})
    await settle(app)
    sent = len(posts(double, THREAD1)) + len(posts(double, THREAD2))
    assert sent == 7, "Teams' 7 per second per conversation, for the channel's threads together"
    await tick(app, fake_clock, 1.1)
    assert len(posts(double, THREAD1)) + len(posts(double, THREAD2)) == 8, "and 8 per 2 seconds"
    assert double.throttled_count == 0


async def test_a_lost_thread_is_not_a_lost_channel(
    app: BotApplication, http: aiohttp.ClientSession, double: ConnectorDouble
) -> None:
    ada, _ = people(http, app, double, THREAD1, "channel", NAMED)
    await ada.say("help")
    double.fail_next("not_found", conversation_id=THREAD2)
    [row_id] = (await notify(http, app, {"to": {"conversations": [THREAD2]}, "text": "into a deleted thread"}))["ids"]
    await settle(app)
    row = await app.outbox.get(row_id)
    assert row is not None and row.status == "failed"
    record = await app.references.get(CHANNEL)
    assert record is not None and record.active, "a thread that is gone does not make the channel unreachable"
    await notify(http, app, {"to": {"conversations": [CHANNEL]}, "text": "still here"})
    await settle(app)
    assert [p.get("text") for p in posts(double, CHANNEL)] == ["still here"]
