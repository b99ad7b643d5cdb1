"""Notices over HTTP (issue 23): acknowledgements, the delivery report, schedules, cancels, recalls.

Everything is driven as Teams and an organisation's systems would: POST /api/notify with NOTIFY_TOKEN, card
buttons pressed by `adaptiveCard/action` invokes to /api/messages, the Bot Connector double as Teams.
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

TOKEN = "notices-token"
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
