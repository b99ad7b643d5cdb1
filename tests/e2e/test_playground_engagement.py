"""Engagement end to end: the welcome card, notifications held mid-topic, and `mute`, in the real Playground.

Every wait is event-driven. To show that something did NOT arrive, the test makes the bot do something
observable afterwards that must come after it (a `help` or `status` round-trip) and checks the chat once
that reply is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playground import ChatMessage, Playground

pytestmark = pytest.mark.e2e

TOKEN = "e2e-engagement-token"
PRODUCT_QUESTION = "Which product should I watch?"
HELP_NEEDLE = "watches product prices for you"  # in every help reply, mid-topic or not
STATUS_NEEDLE = "No analyses are running"  # `status` when idle: one plain-text reply
TURN_FAILED = "something went wrong on my side"  # the bot's on_turn_error apology


@pytest.fixture
def bot_env() -> dict[str, str]:
    """Enable POST /api/notify in the bot subprocess (see conftest.bot_env)."""
    return {"NOTIFY_TOKEN": TOKEN}


def unique_text(label: str) -> str:
    """A notification text no other message can contain (plain words: no markdown surprises)."""
    return f"E2E {label} notification {uuid.uuid4().hex}"


async def _call(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    """One authorized call to the notify API: (status, JSON body)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json()


async def notify(bot: str, conversation_id: str, text: str) -> dict[str, Any]:
    """POST /api/notify to one conversation; asserts the 202 and returns its JSON."""
    request = {"to": {"conversations": [conversation_id]}, "text": text}
    status, body = await _call("POST", f"{bot}/api/notify", json=request)
    assert status == 202, f"POST /api/notify -> {status} {body}"
    assert len(body["ids"]) == 1, body
    return dict(body)


async def outbox_status(bot: str, row_id: int) -> str:
    """The outbox status of a notification (GET /api/notify/{id})."""
    status, body = await _call("GET", f"{bot}/api/notify/{row_id}")
    assert status == 200, f"GET /api/notify/{row_id} -> {status} {body}"
    return str(body["status"])


async def wait_for_status(bot: str, row_id: int, wanted: str, timeout: float = 10.0) -> None:
    """Bounded polling of GET /api/notify/{id}: the worker records a send just after the chat shows it."""
    deadline = time.monotonic() + timeout
    while (seen := await outbox_status(bot, row_id)) != wanted and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # bounded polling of an HTTP resource: there is no event to wait on
    assert seen == wanted, f"outbox row {row_id} is {seen!r}, not {wanted!r}, after {timeout} s"


async def say(pg: Playground, text: str, *needles: str) -> ChatMessage:
    """Type `text`, wait for the bot's reply containing `needles` and for the turn to finish (the bot
    has answered the activity, so its engagement state for the turn is saved)."""
    sent = await pg.send_text(text)
    reply = await pg.wait_for_text(*needles, after=sent)
    delivery = await pg.wait_for_delivery("message", after=sent)
    assert delivery.ok, f"the bot failed the {text!r} turn: {delivery}"
    return reply


def containing(pg: Playground, text: str) -> set[str]:
    """Ids of the distinct bot messages (so far) whose text contains `text`."""
    return {m.message_id for m in pg.messages if m.from_id == pg.bot_id and text in m.text}


def card_strings(card: Any) -> list[str]:
    """Every `text`/`title`/`value` string in an Adaptive Card, depth first."""
    if isinstance(card, list):
        return [s for item in card for s in card_strings(item)]
    if not isinstance(card, dict):
        return []
    own = [v for k, v in card.items() if k in ("text", "title", "value") and isinstance(v, str)]
    return own + [s for v in card.values() if isinstance(v, dict | list) for s in card_strings(v)]


def welcome_rows(database: Path, conversation_id: str) -> list[int]:
    """The outbox ids of the welcome messages the bot queued for the conversation (read-only)."""
    query = "SELECT id FROM outbox WHERE conversation_id = ? AND category = 'welcome'"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        return [int(row[0]) for row in connection.execute(query, (conversation_id,))]


async def install(pg: Playground, bot: Any) -> ChatMessage:
    """Install the bot in the personal chat; wait for both activities to be handled, for the welcome card,
    and for the bot to record it as sent (so no outbox write is in flight when a short test ends)."""
    mark = await pg.install()
    for kind in ("installationUpdate", "conversationUpdate"):
        delivery = await pg.wait_for_delivery(kind, after=mark)
        assert delivery.ok, f"{kind} failed in the bot: {delivery}"
    welcome = await pg.wait_for_message(lambda m: bool(m.cards), after=mark)
    for row_id in welcome_rows(bot.database, pg.conversation_id):
        await wait_for_status(bot, row_id, "sent")
    return welcome


def assert_no_failed_turns(pg: Playground) -> None:
    """No turn ended in the bot's apology, and the connector refused none of the bot's calls."""
    assert not containing(pg, TURN_FAILED), "a turn failed in the bot (see its log)"
    assert not pg.connector_errors


async def test_install_sends_one_welcome_card(playground: Playground, bot_process: Any) -> None:
    welcome = await install(playground, bot_process)

    [card] = welcome.cards
    assert card.get("type") == "AdaptiveCard", card
    text = " ".join(card_strings(card.get("body", []))).lower()
    assert "price watching" in text and "analyses" in text, text
    buttons = {a.get("title"): a.get("data", {}).get("command") for a in card.get("actions", [])}
    assert buttons == {"Watch a price": "watch", "Help": "help"}, buttons
    await say(playground, "status", STATUS_NEEDLE)  # after this, the chat shows what the install sent...
    welcomes = {m.message_id for m in playground.messages if m.from_id == playground.bot_id and m.cards}
    assert welcomes == {welcome.message_id}, [str(m) for m in playground.messages]
    assert len(welcome_rows(bot_process.database, playground.conversation_id)) == 1  # ...the outbox all it queued
    assert_no_failed_turns(playground)


async def test_welcome_help_button_answers_without_a_failed_turn(playground: Playground, bot_process: Any) -> None:
    """Regression: the Playground answers a text + card reply with an empty 202, which used to fail the turn."""
    welcome = await install(playground, bot_process)

    pressed = await playground.submit(welcome, {"command": "help"})

    await playground.wait_for_text(HELP_NEEDLE, after=pressed)
    assert (await playground.wait_for_delivery("message", after=pressed)).ok
    await say(playground, "status", STATUS_NEEDLE)
    assert_no_failed_turns(playground)


async def test_notification_is_held_mid_topic_and_delivered_once_after(
    playground: Playground, bot_process: Any
) -> None:
    await install(playground, bot_process)
    await say(playground, "watch", PRODUCT_QUESTION)  # the turn is over: the conversation is in_topic
    text = unique_text("held")

    answer = await notify(bot_process, playground.conversation_id, text)

    assert (answer["held"], answer["queued"], answer["muted"]) == (1, 0, 0), answer
    [row_id] = answer["ids"]
    # `help` mid-topic re-asks the question and keeps the topic open; nothing is released meanwhile.
    help_sent = await playground.send_text("help")
    await playground.wait_for_text(HELP_NEEDLE, "in the middle of", after=help_sent)
    await playground.wait_for_text(PRODUCT_QUESTION, after=help_sent)
    assert (await playground.wait_for_delivery("message", after=help_sent)).ok
    assert not containing(playground, text), "the held notification arrived mid-topic"
    assert await outbox_status(bot_process, row_id) == "held"

    await say(playground, "gadget", "When should I tell you about")
    done_sent = await playground.send_text("below 10")
    confirmation = await playground.wait_for_text("Done:", "gadget", after=done_sent)
    released = await playground.wait_for_text(text, after=done_sent)

    assert playground.messages.index(released) > playground.messages.index(confirmation)
    assert released.text.strip() == text  # one held item goes out as is, not as a digest
    await say(playground, "help", HELP_NEEDLE)
    assert len(containing(playground, text)) == 1, "the released notification was delivered more than once"
    await wait_for_status(bot_process, row_id, "sent")
    assert_no_failed_turns(playground)


async def test_muted_notifications_are_dropped_until_unmute(playground: Playground, bot_process: Any) -> None:
    await install(playground, bot_process)
    chat = playground.conversation_id
    await say(playground, "mute", "Muted your notifications")  # a 1:1 chat: mutes this user
    muted_text = unique_text("muted")

    answer = await notify(bot_process, chat, muted_text)

    assert (answer["muted"], answer["queued"], answer["held"]) == (1, 0, 0), answer
    await say(playground, "status", STATUS_NEEDLE)
    assert not containing(playground, muted_text), "a muted notification was delivered"
    assert await outbox_status(bot_process, answer["ids"][0]) == "dropped"

    await say(playground, "unmute", "back on")
    back_text = unique_text("unmuted")
    mark = playground.mark()
    answer = await notify(bot_process, chat, back_text)

    assert (answer["queued"], answer["muted"], answer["held"]) == (1, 0, 0), answer
    await playground.wait_for_text(back_text, after=mark)
    await say(playground, "status", STATUS_NEEDLE)
    assert not containing(playground, muted_text), "the muted notification was delivered after unmute"
    assert len(containing(playground, back_text)) == 1
    await wait_for_status(bot_process, answer["ids"][0], "sent")
    assert_no_failed_turns(playground)
