"""The interjection rules as one table, and the engagement machine's persisted transitions."""

from __future__ import annotations

import asyncio

import pytest

from state.clock import FakeClock
from state.db import Database
from state.engagement import Engagement, decide
from tests.conftest import OpenDatabase

# state × category × urgent × muted → action
TABLE = [
    ("idle", "notification", False, False, "deliver"),
    ("idle", "notification", True, False, "deliver"),
    ("idle", "notification", False, True, "drop"),
    ("idle", "notification", True, True, "drop"),
    ("in_topic", "notification", False, False, "hold"),
    ("in_topic", "notification", True, False, "deliver"),
    ("in_topic", "notification", False, True, "drop"),
    ("in_topic", "result", False, False, "hold"),
    ("in_topic", "result", False, True, "hold"),  # results the user asked for ignore mute
    ("idle", "result", False, True, "deliver"),
    ("in_topic", "result", True, False, "deliver"),
    ("in_topic", "welcome", False, False, "deliver"),
    ("in_topic", "progress", False, False, "deliver"),  # an in-place update does not interrupt
    ("in_topic", "reply", False, False, "deliver"),  # a turn's reply that waited for a token
    ("inactive", "notification", False, False, "drop"),
    ("inactive", "result", True, False, "drop"),
    ("inactive", "welcome", False, False, "drop"),
]


@pytest.mark.parametrize(("state", "category", "urgent", "muted", "action"), TABLE)
def test_interjection_rules(state: str, category: str, urgent: bool, muted: bool, action: str) -> None:
    assert decide(state, category=category, urgent=urgent, muted=muted).action == action


# quiet hours / daily digest: state × category × urgent × muted → (action, reason)
DEFERRED = [
    ("idle", "notification", False, False, ("hold", "quiet hours")),
    ("in_topic", "notification", False, False, ("hold", "quiet hours")),
    ("idle", "notification", True, False, ("deliver", "urgent")),  # urgent items bypass
    ("idle", "notification", False, True, ("drop", "notifications are muted")),
    ("idle", "result", False, False, ("deliver", "the user is idle")),  # results you asked for are not held
    ("in_topic", "result", False, False, ("hold", "the user is mid-topic")),
    ("idle", "progress", False, False, ("deliver", "never held")),
    ("idle", "welcome", False, False, ("deliver", "never held")),
    ("inactive", "notification", False, False, ("drop", "the bot cannot reach this conversation")),
]


@pytest.mark.parametrize(("state", "category", "urgent", "muted", "expected"), DEFERRED)
def test_quiet_hours_and_digest_defer_only_non_urgent_notifications(
    state: str, category: str, urgent: bool, muted: bool, expected: tuple[str, str]
) -> None:
    decision = decide(state, category=category, urgent=urgent, muted=muted, deferred="quiet hours")
    assert (decision.action, decision.reason) == expected


async def test_topic_end_releases_once_and_state_persists(open_database: OpenDatabase) -> None:
    released: list[str] = []

    async def release(conversation_id: str, user_id: str | None) -> None:
        assert user_id is None, "a personal chat's topic is the conversation's"
        released.append(conversation_id)

    db = await open_database()
    engagement = Engagement(db, FakeClock())
    engagement.on_topic_ended(release)
    assert await engagement.after_turn("c", mid_topic=True, prompt="Which product?") == "in_topic"
    await db.close()

    db = await open_database()  # a restart in the middle of the topic
    engagement = Engagement(db, FakeClock())
    engagement.on_topic_ended(release)
    assert await engagement.state("c") == "in_topic"
    assert await engagement.pending_prompt("c") == "Which product?"
    assert await engagement.after_turn("c", mid_topic=False, prompt=None) == "idle"
    assert await engagement.after_turn("c", mid_topic=False, prompt=None) == "idle"
    assert released == ["c"], "only the turn in which the topic ends releases"
    assert await engagement.pending_prompt("c") is None
    await db.close()


async def test_removed_then_message_or_install_reactivates(db: Database) -> None:
    engagement = Engagement(db, FakeClock())
    await engagement.fire("c", "removed")
    assert await engagement.fire("c", "topic_started") == "inactive", "no topic in a conversation the bot left"
    assert await engagement.after_turn("c", mid_topic=False, prompt=None) == "idle"
    await engagement.fire("c", "removed")
    assert await engagement.fire("c", "installed") == "idle"
    assert await engagement.mark_welcomed("c") is True
    assert await engagement.mark_welcomed("c") is False
    await engagement.forget_welcome("c")
    assert await engagement.mark_welcomed("c") is True


async def test_members_of_a_channel_have_topics_of_their_own_across_threads(open_database: OpenDatabase) -> None:
    """Ada's open question holds nothing of Bob's; Ada's items wait until her last open thread is done."""
    channel = "19:c@thread.tacv2"
    thread1, thread2 = f"{channel};messageid=1", f"{channel};messageid=2"
    released: list[tuple[str, str | None]] = []

    async def release(conversation_id: str, user_id: str | None) -> None:
        released.append((conversation_id, user_id))

    clock = FakeClock()
    db = await open_database()
    engagement = Engagement(db, clock)
    engagement.on_topic_ended(release)
    assert await engagement.after_turn(thread1, mid_topic=True, prompt="Which product?", user_id="29:ada") == "in_topic"
    clock.advance(1)
    assert await engagement.after_turn(thread2, mid_topic=True, prompt="Which condition?",
                                       user_id="29:ada") == "in_topic"
    assert await engagement.after_turn(thread2, mid_topic=False, prompt=None, user_id="29:bob") == "idle"
    assert await engagement.state(channel) == "idle", "the channel as a whole is never mid-topic"
    wanted = {(channel, "29:ada"), (channel, "29:bob"), ("19:other", "29:ada")}
    assert await engagement.members_in_topic(wanted) == {(channel, "29:ada")}
    assert await engagement.member_prompt(channel, "29:ada") == "Which condition?"
    await db.close()

    db = await open_database()  # a restart in the middle of both topics
    engagement = Engagement(db, clock)
    engagement.on_topic_ended(release)
    assert await engagement.after_turn(thread1, mid_topic=False, prompt=None, user_id="29:ada") == "idle"
    assert released == [], "Ada's question in thread 2 is still open"
    assert await engagement.member_in_topic(channel, "29:ada")
    assert await engagement.after_turn(thread2, mid_topic=False, prompt=None, user_id="29:ada") == "idle"
    assert released == [(channel, "29:ada")]
    assert not await engagement.member_in_topic(channel, "29:ada")
    assert await engagement.member_prompt(channel, "29:ada") is None

    await engagement.after_turn(thread1, mid_topic=True, prompt="Which product?", user_id="29:bob")
    await engagement.fire(channel, "removed")
    await engagement.forget_members(channel)
    assert await engagement.members_in_topic({(channel, "29:bob")}) == set(), "a removal forgets open topics"
    assert await engagement.after_turn(thread1, mid_topic=False, prompt=None, user_id="29:bob") == "idle"
    assert await engagement.state(channel) == "idle", "a message in a thread reactivates the channel"
    await db.close()


async def test_two_processes_ending_one_topic_release_once(open_database: OpenDatabase) -> None:
    """No cache, and transitions are compare-and-set: of two replicas ending one topic, one releases."""
    released: list[str] = []

    async def release(conversation_id: str, user_id: str | None) -> None:
        released.append(conversation_id)

    one, two = Engagement(await open_database(), FakeClock()), Engagement(await open_database(), FakeClock())
    for engagement in (one, two):
        engagement.on_topic_ended(release)
    for round_ in range(10):
        conversation = f"c{round_}"
        await one.after_turn(conversation, mid_topic=True, prompt="Which product?")
        assert await two.state(conversation) == "in_topic", "the other replica sees it at once"
        await asyncio.gather(one.after_turn(conversation, mid_topic=False, prompt=None),
                             two.after_turn(conversation, mid_topic=False, prompt=None))
        assert released.count(conversation) == 1, round_
        assert await one.state(conversation) == await two.state(conversation) == "idle"
