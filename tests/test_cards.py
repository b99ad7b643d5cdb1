"""Every card the bot sends, parsed by Microsoft's `adaptivecards` JavaScript library (schema 1.5).

Two sources of cards: the card builders at their edges (the longest lists, the biggest analysis, digests of
messages near the size limit), and every message the bot actually sent in a scripted conversation (welcome,
help, list, settings, alert and its in-place acknowledgement, quiet-hours digest, analysis acknowledgement and
result). Each must parse without any event from the library, be version 1.5, stay within the size the notify API
enforces, and show text as text (no HTML entities or tags).

Teams extensions: chart elements (`Chart.Line`, ...) are rendered by Teams but unknown to the library. The library
reports them as `UnknownElementType` and renders their `fallback`. That one event is accepted only for the
`Chart.*` element types Teams documents, and only when the element carries a fallback element, which must
itself parse cleanly (it is what such clients show). Any other event fails the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.analyses.report import result_payload, summarize
from bot.api.notify import MAX_MESSAGE_BYTES
from bot.delivery.digest import digest_payloads
from dialogs.alert_card import Alert, acknowledged_payload, alert_payload, owner_card
from dialogs.cards import help_card, watch_list_card
from dialogs.commands import help_text
from dialogs.settings_card import settings_card
from dialogs.welcome_card import InstallContext, welcome_payload
from state.clock import FakeClock
from state.model import UNTIL_UNMUTED, Condition, NotificationSettings, Observation, QuietHours, UserRef, WatchView
from state.outbox import OutboxRow
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble
from tests.e2e.playground import NODE_DIR, PlaygroundUnavailable, find_node_tools

CARD = "application/vnd.microsoft.card.adaptive"
CHECKER = NODE_DIR / "check_cards.js"
TEAMS_CHARTS = {"Chart.Line", "Chart.VerticalBar", "Chart.VerticalBar.Grouped", "Chart.HorizontalBar",
                "Chart.HorizontalBar.Stacked", "Chart.Pie", "Chart.Donut", "Chart.Gauge"}
ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#\d+);")
PLACEHOLDER = re.compile(r"<[a-zA-Z][\w ]*>")  # `<product>` in markdown shows as `&lt;product&gt;` in clients
NOW = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def node() -> str:
    try:
        return find_node_tools().node
    except PlaygroundUnavailable as exc:
        reason = f"node + the adaptivecards package unavailable: {exc}"
    print(reason, file=sys.stderr)
    if os.environ.get("REQUIRE_PLAYGROUND") == "1":
        pytest.fail(f"{reason}\n(REQUIRE_PLAYGROUND=1, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def parse_with_adaptivecards(node: str, cards: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    answer = subprocess.run([node, str(CHECKER)], input=json.dumps([{"name": k, "card": v} for k, v in cards.items()]),
                            capture_output=True, text=True, timeout=120, check=False)
    assert answer.returncode == 0, answer.stderr
    return {r["name"]: r for r in json.loads(answer.stdout)}


def elements(card: Any) -> Iterator[dict[str, Any]]:
    if isinstance(card, dict):
        if isinstance(card.get("type"), str):
            yield card
        for value in card.values():
            yield from elements(value)
    elif isinstance(card, list):
        for item in card:
            yield from elements(item)


def strings(card: Any) -> Iterator[str]:
    if isinstance(card, dict):
        for key, value in card.items():
            if isinstance(value, str) and key in ("text", "title", "value", "fallbackText", "summary"):
                yield value
            else:
                yield from strings(value)
    elif isinstance(card, list):
        for item in card:
            yield from strings(item)


def problems(name: str, card: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """Everything wrong with one card (empty when it is fine)."""
    found = []
    if card.get("type") != "AdaptiveCard" or card.get("version") != "1.5":
        found.append(f"{name}: not an Adaptive Card of version 1.5")
    charts = {e["type"]: e for e in elements(card) if e["type"].startswith("Chart.")}
    for event in result["events"]:
        chart = re.fullmatch(r'Unknown element type "(Chart\.[\w.]+)"\. Fallback will be used if present\.',
                             event["message"])
        if event["event"] == "UnknownElementType" and chart and chart.group(1) in TEAMS_CHARTS:
            fallback = charts.get(chart.group(1), {}).get("fallback")
            if not isinstance(fallback, dict) or not isinstance(fallback.get("type"), str):
                found.append(f"{name}: {chart.group(1)} has no fallback element for clients without charts")
            continue
        found.append(f"{name}: {event['event']}: {event['message']}")
    rendered = set(strings(result["json"]))
    for chart in charts.values():
        if isinstance(chart.get("fallback"), dict) and not set(strings(chart["fallback"])) <= rendered:
            found.append(f"{name}: the library did not render {chart['type']}'s fallback")
    found += [f"{name}: text shows markup {s!r}" for s in strings(card) if ENTITY.search(s) or PLACEHOLDER.search(s)]
    return found


def check_all(node: str, activities: dict[str, dict[str, Any]]) -> None:
    """Parse every card of every activity; check sizes and text of the activities themselves."""
    cards: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    for name, activity in activities.items():
        size = len(json.dumps(activity).encode())
        if size > MAX_MESSAGE_BYTES:
            failures.append(f"{name}: {size} bytes, over the notify API's {MAX_MESSAGE_BYTES}")
        failures += [f"{name}: text shows markup {s!r}" for s in (activity.get("text"), activity.get("summary"))
                     if isinstance(s, str) and (ENTITY.search(s) or PLACEHOLDER.search(s))]
        for i, attachment in enumerate(activity.get("attachments") or []):
            if attachment.get("contentType") == CARD:
                cards[f"{name}#{i}"] = attachment["content"]
    assert cards, "no cards to check"
    results = parse_with_adaptivecards(node, cards)
    for name, card in cards.items():
        failures += problems(name, card, results[name])
    assert not failures, "\n".join(failures)


# ---- the builders, at their edges ----------------------------------------------------------------------------


def _alert(**kw: Any) -> Alert:
    base: dict[str, Any] = {
        "watch_id": 7, "product": "gadget", "old": Decimal("12"), "new": Decimal("9.5"), "currency": "USD",
        "source": "Acme Store & Co", "url": "https://shop.example/gadget?a=1&b=2",
        "condition": Condition("below", Decimal(10)), "observed_at": NOW, "timezone": "Europe/Berlin",
    }
    return Alert(**{**base, **kw})


def _row(n: int, payload: dict[str, Any], note: str | None = None) -> OutboxRow:
    return OutboxRow(id=n, conversation_id="c", target_user_id=None, tenant_id="t", kind="send", update_of=None,
                     payload=payload, category="notification", subject=None, priority=0, status="held",
                     not_before=0, expires_at=None, attempts=0, last_error=note, activity_id=None, dedup_key=None,
                     created_at=0)


def _history(count: int, product: str = "gadget") -> list[Observation]:
    return [Observation(product, Decimal(10) + Decimal(n % 17) / 4, "USD", "Acme Store", None,
                        NOW - timedelta(hours=count - n)) for n in range(count)]


def builder_activities() -> dict[str, dict[str, Any]]:
    def card(content: dict[str, Any]) -> dict[str, Any]:
        return {"type": "message", "attachments": [{"contentType": CARD, "content": content}]}

    long_name = "super gadget 3000 " * 5
    watches = [WatchView(f"{long_name[:90]} {n}", Condition("percent", Decimal("2.5")), Decimal("1299.5"))
               for n in range(40)]
    everything = NotificationSettings(timezone="Europe/Berlin", timezone_chosen=True,
                                      quiet=QuietHours("22:00", "07:00"), digest_at="09:00",
                                      muted_until=NOW + timedelta(hours=2))
    big_note = {"type": "message", "text": "x" * (MAX_MESSAGE_BYTES - 500)}
    alerts = [_row(n, alert_payload(_alert(watch_id=n)), "quiet hours") for n in range(30)]
    out = {
        "help": {"type": "message", "text": help_text("Price Watch"), **card(help_card())},
        "list": card(watch_list_card(watches)),
        "settings-defaults": card(settings_card(NotificationSettings(), NotificationSettings(), now=NOW, shared=False)),
        "settings-everything": card(settings_card(everything, everything, now=NOW, shared=False)),
        "settings-group": card(settings_card(NotificationSettings(timezone="Asia/Tokyo"),
                                             NotificationSettings(muted_until=UNTIL_UNMUTED), now=NOW, shared=True)),
        "alert": alert_payload(_alert()),
        "alert-no-url-no-previous": alert_payload(_alert(url=None, old=None)),
        "alert-acknowledged": acknowledged_payload("Price alert for gadget", "Snoozed until 2026-01-01 10:00 CET."),
        "alert-group": {"type": "message",  # its text is the @mention, which Teams renders
                        "attachments": alert_payload(_alert(), UserRef("29:ada", name="Ada"))["attachments"]},
        "alert-owner-view": {"type": "message", "attachments": [owner_card(7, "gadget", Condition(
            "below", Decimal("10")), Decimal("9.5"))]},
        "analysis": result_payload(summarize(long_name.strip(), _history(500, long_name.strip())),
                                   timezone="America/New_York"),
        "analysis-one-price": result_payload(summarize("gadget", _history(1)), timezone="Europe/Berlin"),
    }
    for scope in ("personal", "groupChat", "team", "member"):
        out[f"welcome-{scope}"] = welcome_payload("Price Watch", InstallContext(scope, "Ada (admin)", "Pricing & Co",
                                                                                "General"))
    for n, payload in enumerate(digest_payloads(alerts, reason="quiet hours", max_bytes=MAX_MESSAGE_BYTES)):
        out[f"digest-alerts-{n}"] = payload
    rows = [_row(n, big_note) for n in range(3)] + [_row(9, {"type": "message", "text": "small"})]
    for n, payload in enumerate(digest_payloads(rows, reason="daily digest", resume_prompt="Which product?",
                                                max_bytes=MAX_MESSAGE_BYTES)):
        out[f"digest-big-{n}"] = payload
    return out


def test_every_card_builder_parses_in_the_adaptivecards_library_within_the_size_limit(node: str) -> None:
    activities = builder_activities()
    assert sum(name.startswith("digest-alerts-") for name in activities) >= 2, "30 alerts need more than 1 message"
    check_all(node, activities)


def test_the_checker_catches_what_it_is_meant_to(node: str) -> None:
    """The checker itself: unknown elements, charts without fallback, entities and old versions all fail."""
    bad = {
        "unknown": {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "Sparkline"}]},
        "chart-without-fallback": {"type": "AdaptiveCard", "version": "1.5",
                                   "body": [{"type": "Chart.Line", "data": []}]},
        "entity": {"type": "AdaptiveCard", "version": "1.5",
                   "body": [{"type": "TextBlock", "text": "watch &lt;product&gt;"}]},
        "placeholder": {"type": "AdaptiveCard", "version": "1.5",
                        "body": [{"type": "TextBlock", "text": "watch <product> below <price>"}]},
        "version": {"type": "AdaptiveCard", "version": "1.6", "body": []},
        "bad-action": {"type": "AdaptiveCard", "version": "1.5", "actions": [{"type": "Action.Teleport"}]},
    }
    results = parse_with_adaptivecards(node, bad)
    for name, card in bad.items():
        assert problems(name, card, results[name]), f"{name} was not caught"


# ---- what the bot really sent in a conversation ------------------------------------------------------------


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


async def test_every_card_sent_in_a_conversation_parses(
    node: str, start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    app = await start_bot(notify_token="tok", prices_token="tok", price_source="none", alert_coalesce_seconds=2.0,
                          analyze_seconds=30.0, progress_delays=(5.0,))
    chat = Chat(http, app, double)

    async def tick(seconds: float) -> None:
        fake_clock.advance(seconds)
        await app.scheduler.run_due()
        await chat.settle()

    async def push(price: str) -> None:
        async with http.post(bot_url(app, "/api/prices"), headers={"Authorization": "Bearer tok"},
                             json={"product": "gadget", "price": price, "currency": "USD", "source": "Acme"}) as r:
            assert r.status == 202

    await chat.install()
    for text in ("help", "watch gadget below 10", "list", "settings", "quiet 22:00-07:00", "timezone Europe/Berlin"):
        await chat.say(text)
    await push("12")
    await push("9.5")
    await tick(3)
    await chat.say("quiet off")  # releases the held alert as a digest
    await push("9")
    await tick(3)
    [*_, alert] = [a for a in double.sent_activities(chat.conversation_id) if "Price alert" in json.dumps(a)]
    [sent] = [r for r in double.find(op="send") if r.body == alert]
    stop = next(a for a in alert["attachments"][0]["content"]["actions"] if a["title"] == "Stop watching")
    await chat.post(chat.activity("message", value=stop["data"], replyToId=sent.response["id"]))
    await chat.say("analyze gadget")
    await tick(5)
    await tick(25)
    await chat.say("settings")
    await chat.settle()

    activities = {f"{r.op}-{n}": r.body for n, r in enumerate(double.requests) if r.op in ("send", "reply", "update")
                  and isinstance(r.body, dict)}
    kinds = " ".join(json.dumps(a) for a in activities.values())
    for needle in ("Hi, I'm", "Try one of these", "You're watching", "Your settings", "Price alert",
                   "While your quiet hours were on", "Stopped watching gadget", "Analysis of gadget is ready",
                   "Chart.Line", "Working on it", "Done"):
        assert needle in kinds, f"the conversation never sent {needle!r}"
    check_all(node, activities)


def test_the_checker_script_is_part_of_the_node_tools() -> None:
    assert CHECKER.is_file() and "adaptivecards" in json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    assert Path(NODE_DIR / "package-lock.json").read_text().count('"node_modules/adaptivecards"') == 1
