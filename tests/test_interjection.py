"""Proactive items vs. the conversation: hold mid-topic, release once when it ends, digest, mute, welcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from state.clock import FakeClock
from state.outbox import OutboxItem
from tests.chat import Chat
from tests.conftest import StartBot
from tests.connector_double import ConnectorDouble


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


@pytest.fixture
async def chat(start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble) -> Chat:
    app = await start_bot(notify_token="tok")
    chat = Chat(http, app, double)
    await chat.install()
    await chat.settle()
    return chat


def note(text: str, conversation_id: str = "dm-ada", **kw: object) -> OutboxItem:
    return OutboxItem(payload={"type": "message", "text": text}, conversation_id=conversation_id,
                      tenant_id="t1", **kw)  # type: ignore[arg-type]


async def test_welcome_once_with_why_what_next(chat: Chat) -> None:
    [welcome] = chat.cards()
    text = " ".join(chat.texts())
    assert "You installed Price Watch" in text and "Price watching" in text and "Analyses" in text
    assert [a["data"]["command"] for a in welcome["actions"]] == ["watch", "help"]
    # Teams also sends conversationUpdate(membersAdded: bot) on install: still one welcome
    await chat.post(chat.activity("conversationUpdate", membersAdded=[{"id": "28:bot"}]))
    await chat.install()
    await chat.settle()
    assert len(chat.cards()) == 1


async def test_reinstall_after_removal_welcomes_again(chat: Chat) -> None:
    await chat.uninstall()
    record = await chat.app.references.get(chat.conversation_id)
    assert record is not None and not record.active
    await chat.install()
    await chat.settle()
    assert len(chat.cards()) == 2


async def test_team_welcome_says_where_and_who(start_bot: StartBot, http: aiohttp.ClientSession,
                                               double: ConnectorDouble) -> None:
    app = await start_bot()
    team = Chat(http, app, double, conversation_id="19:general@thread.tacv2", kind="channel",
                channel_data={"tenant": {"id": "t1"}, "team": {"id": "19:team", "name": "Pricing"},
                              "channel": {"id": "19:general", "name": "General"}})
    await team.post(team.activity("conversationUpdate", membersAdded=[{"id": "28:bot"}]))
    await team.settle()
    [text] = team.texts()
    assert "Ada Lovelace added Price Watch to the **Pricing** team" in text and "General" in text
    assert double.find(op="create") == [], "no 1:1 welcomes unless WELCOME_TEAM_MEMBERS is on"


async def test_mid_topic_holds_then_releases_exactly_once_after_the_answer(chat: Chat) -> None:
    await chat.say("watch")
    [admission] = await chat.app.proactive.enqueue([note("Gadget dropped to 9.50")])
    assert admission.decision.action == "hold"
    await chat.settle()
    assert not any("Gadget dropped" in t for t in chat.texts()), "nothing interrupts the open question"
    await chat.say("help")  # an interruption keeps the topic open
    await chat.settle()
    assert not any("Gadget dropped" in t for t in chat.texts())
    await chat.say("gadget")
    await chat.say("below 10")
    await chat.settle()
    texts = chat.texts()
    assert sum("Gadget dropped" in t for t in texts) == 1
    confirm = next(i for i, t in enumerate(texts) if "gadget" in t.lower() and "10" in t and "Gadget dropped" not in t)
    assert texts.index(next(t for t in texts if "Gadget dropped" in t)) > confirm, "the release follows the answer"
    await chat.say("list")
    await chat.settle()
    assert sum("Gadget dropped" in t for t in chat.texts()) == 1


async def test_several_held_items_go_out_as_one_digest_newest_price_wins(chat: Chat) -> None:
    await chat.say("watch")
    before = len(chat.texts())
    await chat.app.proactive.enqueue([note("Gadget now 9.50", subject="price:gadget")])
    await chat.app.proactive.enqueue([note("Gizmo now 20", subject="price:gizmo")])
    await chat.app.proactive.enqueue([note("Gadget now 9.10", subject="price:gadget")])
    await chat.say("cancel")
    await chat.settle()
    new = chat.texts()[before + 1:]  # after the cancel confirmation
    digests = [t for t in new if "While we were talking" in t]
    assert len(digests) == 1 and len(new) == 1
    assert "Gadget now 9.10" in digests[0] and "Gizmo now 20" in digests[0] and "9.50" not in digests[0]
    assert (await chat.app.outbox.counts()).get("superseded") == 1


async def test_urgent_and_results_and_welcomes_vs_mid_topic(chat: Chat) -> None:
    await chat.say("watch")
    [urgent] = await chat.app.proactive.enqueue([note("Security alert", priority=1)])
    assert urgent.decision.action == "deliver"
    await chat.settle()
    assert any("Security alert" in t for t in chat.texts())


async def test_mute_drops_notifications_for_good_and_unmute_restores(chat: Chat) -> None:
    await chat.say("mute")
    [muted] = await chat.app.proactive.enqueue([note("Muted news")])
    [result] = await chat.app.proactive.enqueue([note("Your analysis is ready", category="result")])
    assert muted.decision.action == "drop" and result.decision.action == "deliver"
    await chat.say("unmute")
    await chat.settle()
    texts = chat.texts()
    assert not any("Muted news" in t for t in texts), "a muted notification is never delivered later"
    assert any("Your analysis is ready" in t for t in texts)
    row = await chat.app.outbox.get(muted.id)
    assert row is not None and row.status == "dropped" and "muted" in (row.last_error or "")
    [after] = await chat.app.proactive.enqueue([note("Back on")])
    await chat.settle()
    assert after.decision.action == "deliver" and any("Back on" in t for t in chat.texts())


async def test_mute_for_a_duration_expires(chat: Chat, fake_clock: FakeClock) -> None:
    await chat.say("mute 2h")
    [first] = await chat.app.proactive.enqueue([note("During")])
    fake_clock.advance(2 * 3600 + 1)
    [second] = await chat.app.proactive.enqueue([note("After")])
    assert (first.decision.action, second.decision.action) == ("drop", "deliver")


async def test_hold_max_delivers_without_breaking_the_question(chat: Chat, fake_clock: FakeClock) -> None:
    await chat.say("watch")
    await chat.app.proactive.enqueue([note("Long-held news")])
    fake_clock.advance(601)
    await chat.app.scheduler.run_due()
    await chat.settle()
    [digest] = [t for t in chat.texts() if "Long-held news" in t]
    assert "Back to where we were" in digest and "product" in digest.lower()
    await chat.say("gadget")  # the question is still open and still works
    await chat.say("below 10")
    await chat.settle()
    assert sum("Long-held news" in t for t in chat.texts()) == 1


async def test_held_items_survive_a_restart(start_bot: StartBot, http: aiohttp.ClientSession,
                                            double: ConnectorDouble) -> None:
    app = await start_bot()
    chat = Chat(http, app, double)
    await chat.install()
    await chat.say("watch")
    await app.proactive.enqueue([note("Held across restart")])
    await app.stop()
    again: BotApplication = await start_bot()
    chat = Chat(http, again, double)
    await chat.say("gadget")
    await chat.say("below 10")
    await chat.settle()
    assert sum("Held across restart" in t for t in chat.texts()) == 1


async def test_uninstall_cancels_held_and_pending_items(chat: Chat) -> None:
    await chat.say("watch")
    [held] = await chat.app.proactive.enqueue([note("Never sent")])
    await chat.uninstall()
    row = await chat.app.outbox.get(held.id)
    assert row is not None and row.status == "cancelled"
    [later] = await chat.app.proactive.enqueue([note("Also never")])
    assert later.decision.action == "drop"


async def test_welcome_team_members_pages_the_roster_and_greets_each_once(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = await start_bot(welcome_team_members=True)
    team_id = "19:general@thread.tacv2"
    double.add_conversation(team_id, tenant_id="t1")
    for i in range(150):  # two pages of 100
        double.add_member(team_id, {"id": f"29:member-{i}", "name": f"Member {i}", "tenantId": "t1"})
    double.add_member(team_id, {"id": "28:bot", "name": "Price Watch"})
    team = Chat(http, app, double, conversation_id=team_id, kind="channel",
                channel_data={"tenant": {"id": "t1"}, "team": {"id": team_id, "name": "Pricing"}})
    batches: list[int] = []
    enqueue = app.proactive.enqueue

    async def noted(items: Sequence[OutboxItem], **kwargs: Any) -> list[Any]:
        batches.append(sum(1 for i in items if i.target_user_id))
        return await enqueue(items, **kwargs)

    monkeypatch.setattr(app.proactive, "enqueue", noted)
    await team.post(team.activity("conversationUpdate", membersAdded=[{"id": "28:bot"}]))
    await app.scheduler.run_due()
    assert [b for b in batches if b] == [100, 50], "a page per run, the next scheduled with its token"
    for _ in range(10):  # 150 sends at the tenant's 50 per second
        await team.settle()
        fake_clock.advance(1.1)
    creates = double.find(op="create")
    assert len(creates) == 150, "one 1:1 chat per member, none for the bot itself"
    assert {c.body["members"][0]["id"] for c in creates} == {f"29:member-{i}" for i in range(150)}
    assert len(double.find(op="get_paged_members")) == 2
    welcomes = [r for r in double.find(op="send") if r.conversation_id != team_id]
    assert len(welcomes) == 150 and "added Price Watch to the **Pricing** team" in str(welcomes[0].body)
    # the same install event again greets nobody twice
    await team.post(team.activity("conversationUpdate", membersAdded=[{"id": "28:bot"}]))
    await app.scheduler.run_due()
    await team.settle()
    assert len(double.find(op="create")) == 150


async def test_a_topic_end_and_the_hold_max_job_racing_send_one_digest(chat: Chat) -> None:
    """release() runs from the turn that ends the topic and from the HOLD_MAX job; racing, they send once."""
    await chat.say("watch")
    await chat.app.proactive.enqueue([note("Gadget now 9.10"), note("Gizmo now 20")])
    before = len(chat.texts())
    proactive = chat.app.proactive
    released = await asyncio.gather(proactive.release("dm-ada"), proactive.release("dm-ada", resume_prompt="?"))
    await chat.settle()
    assert sorted(released) == [0, 2], "each held item is taken by exactly one release"
    new = chat.texts()[before:]
    assert len(new) == 1 and "Gadget now 9.10" in new[0] and "Gizmo now 20" in new[0]
    statuses = sorted(r.status for r in await chat.app.outbox.get_many(range(1, 10)))
    assert statuses.count("merged") == 2 and statuses.count("sent") == 2, statuses  # welcome + one digest


async def test_a_held_item_whose_release_job_was_lost_gets_one_at_start_up(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    """A crash between holding a row and scheduling its release must not leave it waiting for ever."""
    app = await start_bot()
    chat = Chat(http, app, double)
    await chat.install()
    await chat.say("watch")
    await app.proactive.enqueue([note("Held, job lost")])
    assert await app.scheduler.cancel(key="hold:dm-ada")  # as if the process died before scheduling it
    await app.stop()
    again: BotApplication = await start_bot(hold_max_seconds=600)
    assert await again.scheduler.get(key="hold:dm-ada") is not None
    fake_clock.advance(601)  # the user never comes back to the question
    await again.scheduler.run_due()
    chat = Chat(http, again, double)
    await chat.settle()
    assert sum("Held, job lost" in t for t in chat.texts()) == 1
