"""Price alerts and analyses end to end: pushed prices, the alert card and its buttons, and a long-running
`analyze` with in-place progress, in the real Playground.

Every wait is event-driven. To show that something did NOT arrive, the test makes the bot do something
observable afterwards (a `list` or `status` round-trip) and checks the chat once that reply is in.
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

TOKEN = "e2e-prices-token"
URL = "https://shop.example/gadget"
HELP_NEEDLE = "watches product prices for you"
TURN_FAILED = "something went wrong on my side"  # the bot's on_turn_error apology
PROGRESS = "Still working on **gadget**"
ACK = "Working on it: analysing **gadget**"


@pytest.fixture
def bot_env() -> dict[str, str]:
    """Enable POST /api/prices, no polled source, and short alert/analysis delays (see conftest.bot_env)."""
    return {
        "PRICES_TOKEN": TOKEN,
        "PRICE_SOURCE": "none",
        "ALERT_COALESCE_SECONDS": "0.3",
        "ANALYZE_SECONDS": "4",
        "PROGRESS_DELAYS": "1,2",
    }


async def push_price(bot: str, price: str, source: str, url: str | None = URL) -> None:
    """POST /api/prices for `gadget` in USD; asserts the 202."""
    body = {"product": "gadget", "price": price, "currency": "USD", "source": source, "url": url}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{bot}/api/prices", json=body, headers=headers) as resp,
    ):
        answer = await resp.json()
    assert resp.status == 202, f"POST /api/prices -> {resp.status} {answer}"


def last_price(database: Path) -> str | None:
    """The price the evaluator last recorded on the gadget watch (read-only)."""
    query = "SELECT last_price FROM watches WHERE product_key = 'gadget'"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        row = connection.execute(query).fetchone()
    return None if row is None else row[0]


async def wait_for_evaluation(database: Path, price: str, timeout: float = 10.0) -> None:
    """Bounded polling of the watch row: evaluating a price that alerts nobody shows nothing in the chat."""
    deadline = time.monotonic() + timeout
    while (seen := last_price(database)) != price and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # bounded polling of stored state: there is no event to wait on
    assert seen == price, f"the watch last saw {seen!r}, not {price!r}, after {timeout} s"


async def say(pg: Playground, text: str, *needles: str) -> ChatMessage:
    """Type `text`, wait for the bot's reply containing `needles` and for the turn to end successfully."""
    sent = await pg.send_text(text)
    reply = await pg.wait_for_text(*needles, after=sent)
    delivery = await pg.wait_for_delivery("message", after=sent)
    assert delivery.ok, f"the bot failed the {text!r} turn: {delivery}"
    return reply


def card_strings(card: Any) -> list[str]:
    """Every `text`/`title`/`value` string in an Adaptive Card, depth first."""
    if isinstance(card, list):
        return [s for item in card for s in card_strings(item)]
    if not isinstance(card, dict):
        return []
    own = [v for k, v in card.items() if k in ("text", "title", "value") and isinstance(v, str)]
    return own + [s for v in card.values() if isinstance(v, dict | list) for s in card_strings(v)]


def card_text(message: ChatMessage) -> str:
    """All the strings of a message's cards, joined."""
    return " ".join(card_strings(message.cards))


def posted(pg: Playground, needle: str) -> list[ChatMessage]:
    """The bot's new messages (not updates) so far whose text or cards contain `needle`."""
    return [
        m
        for m in pg.messages
        if m.from_id == pg.bot_id and m.action == "createMessage" and needle in f"{m.text} {card_text(m)}"
    ]


def assert_no_failed_turns(pg: Playground) -> None:
    """No turn ended in the bot's apology, and the connector refused none of the bot's calls."""
    assert not posted(pg, TURN_FAILED), "a turn failed in the bot (see its log)"
    assert not pg.connector_errors, pg.connector_errors


async def test_price_alert_fires_once_below_threshold_and_stop_watching_updates_it(
    playground: Playground, bot_process: Any
) -> None:
    """`watch gadget below 10`; 12 alerts nobody, 9.5 sends one card (12 → 9.5); Stop watching updates it."""
    source = f"E2E feed {uuid.uuid4().hex[:8]}"
    await say(playground, "watch gadget below 10", "Done:", "gadget", "drops below 10.00")

    await push_price(bot_process, "12", source)
    await wait_for_evaluation(bot_process.database, "12")  # evaluated, alerting nobody...
    mark = playground.mark()
    await push_price(bot_process, "9.5", source)

    alert = await playground.wait_for_message(lambda m: "Price alert" in card_text(m), after=mark)
    assert alert.conversation_id == playground.conversation_id
    [card] = alert.cards
    text = card_text(alert)
    assert "12.00 → 9.50 USD (\u221220.8%)" in text, text
    assert f"[gadget]({URL})" in text and "drops below 10.00" in text and source in text, text
    facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert facts["Reported by"] == source and set(facts) == {"Why", "Reported by", "Seen at"}, facts
    buttons = {a["title"]: a for a in card["actions"]}
    assert list(buttons) == ["View", "Snooze 1 hour", "Snooze 1 day", "Stop watching", "Mute notifications"]
    assert buttons["View"]["url"] == URL
    await say(playground, "list", "You're watching 1 product")  # ...so by now the chat shows every alert
    assert [m.message_id for m in posted(playground, "Price alert")] == [alert.message_id], "not exactly 1 alert"

    stop = buttons["Stop watching"]
    assert stop["type"] == "Action.Submit" and stop["data"]["action"] == "stop", stop
    pressed = await playground.submit(alert, stop["data"])

    updated = await playground.wait_for_message(
        lambda m: m.action == "updateMessage" and "Stopped watching gadget." in card_text(m), after=pressed
    )
    assert updated.message_id == alert.message_id, "the alert card was not updated in place"
    assert not updated.cards[0].get("actions"), "the acknowledged card still has buttons"
    assert (await playground.wait_for_delivery("message", after=pressed)).ok
    await say(playground, "list", "You aren't watching any prices yet")
    assert len(posted(playground, "Price alert")) == 1
    assert_no_failed_turns(playground)


async def test_analyze_answers_at_once_updates_progress_in_place_and_delivers_the_result(
    playground: Playground, bot_process: Any
) -> None:
    """`analyze gadget`: at most two messages. The acknowledgement comes at once and is updated in place with
    progress (`help` is answered meanwhile) and finally "Done"; the result card has the chart and the figures."""
    for price in ("12", "9.5", "11"):  # recorded before the 202; no watch, so no alerts
        await push_price(bot_process, price, "E2E feed")

    mark = playground.mark()
    started = await say(playground, "analyze gadget", ACK)
    assert started.action == "createMessage"

    helped = await say(playground, "help", HELP_NEEDLE)  # answered while the analysis runs
    in_place = await playground.wait_for_message(
        lambda m: m.action == "updateMessage" and m.message_id == started.message_id and PROGRESS in m.text,
        after=mark,
    )
    result = await playground.wait_for_message(lambda m: "Analysis of gadget is ready" in card_text(m), after=mark)
    done = await playground.wait_for_message(
        lambda m: m.action == "updateMessage" and m.message_id == started.message_id and "Done" in m.text,
        after=mark,
    )

    order = [playground.messages.index(m) for m in (started, helped, in_place, result, done)]
    assert order[0] < order[1] and order[0] < order[2] < order[4] and order[3] < order[4], [
        str(m) for m in playground.messages]
    [card] = result.cards
    [chart] = [b for b in card["body"] if b["type"] == "Chart.Line"]
    assert chart["fallback"]["type"] == "Container", chart
    assert [v["y"] for v in chart["data"][0]["values"]] == [12.0, 9.5, 11.0]
    facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert facts["Min / max"] == "9.50 / 12.00 USD", facts
    assert facts["Mean"].startswith("10.83") and facts["Latest"] == "11.00 USD", facts  # mean of 12, 9.5, 11
    assert facts["Trend"].startswith("falling (-8.3%"), facts
    assert facts["Observations"].startswith("3 since"), facts
    await say(playground, "status", "No analyses are running")
    created = [m for m in playground.messages[mark.messages:] if m.from_id == playground.bot_id
               and m.action == "createMessage" and ("**gadget**" in m.text or "Analysis of gadget" in card_text(m))]
    assert [m.message_id for m in created] == [started.message_id, result.message_id], [str(m) for m in created]
    assert_no_failed_turns(playground)
