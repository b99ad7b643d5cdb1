"""`settings`, `timezone`, `quiet`, `digest`: the card, its buttons, and answers to bad input."""

from __future__ import annotations

import pytest
from botbuilder.schema import Activity, ActivityTypes, ConversationAccount
from dialog_chat import CONVERSATION, Chat, card_of, submit_actions

from state.model import QuietHours


def facts(card: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}


async def test_settings_card_shows_defaults_and_offers_to_turn_things_on(chat: Chat) -> None:
    [reply] = await chat.send("settings")
    card = card_of(reply)
    assert facts(card) == {
        "Time zone": "UTC (00:00 UTC now; Teams hasn't told me yours yet)",
        "Quiet hours": "Off", "Daily digest": "Off", "Notifications": "On",
    }
    assert [b["data"] for b in submit_actions(card)] == [
        {"command": "quiet", "args": "22:00-07:00"}, {"command": "digest", "args": "daily 09:00"},
        {"command": "mute"},
    ]
    assert "quiet hours off" in card["fallbackText"] and chat.in_topic is False


async def test_settings_buttons_turn_quiet_hours_and_the_digest_on_and_off(chat: Chat) -> None:
    [reply] = await chat.press(command="quiet", args="22:00-07:00")
    assert reply.startswith("Quiet hours on: 22:00–07:00 (UTC).")
    [reply] = await chat.press(command="digest", args="daily 09:00")
    assert reply.startswith("Daily digest on:") and "09:00 (UTC)" in reply
    await chat.texts("mute")
    card = card_of((await chat.send("settings"))[0])
    assert facts(card)["Quiet hours"] == "22:00–07:00" and facts(card)["Daily digest"] == "every day at 09:00"
    assert facts(card)["Notifications"] == "Muted until you unmute"
    assert [b["data"] for b in submit_actions(card)] == [
        {"command": "quiet", "args": "off"}, {"command": "digest", "args": "off"}, {"command": "unmute"},
    ]
    assert await chat.press(command="quiet", args="off") == ["Quiet hours are off. Anything they were holding is on "
                                                             "its way."]
    assert chat.preferences.chosen["user:29:ada"].quiet is None


@pytest.mark.parametrize("text", ["quiet soon", "quiet 22:00", "quiet 7-7", "quiet 25:00-07:00"])
async def test_quiet_hours_that_cannot_be_read_get_a_hint(chat: Chat, text: str) -> None:
    [reply] = await chat.texts(text)
    assert reply.startswith("Tell me when, as a range of local times: `quiet 22:00-07:00`")


@pytest.mark.parametrize("text", ["digest weekly", "digest daily", "digest 9am tomorrow"])
async def test_digest_times_that_cannot_be_read_get_a_hint(chat: Chat, text: str) -> None:
    assert await chat.texts(text) == ["Tell me the local time for your digest: `digest daily 09:00` (or `digest off`)."]


async def test_digest_accepts_at_and_bare_times(chat: Chat) -> None:
    await chat.texts("digest at 8")
    assert chat.preferences.chosen["user:29:ada"].digest_at == "08:00"
    await chat.texts("digest daily 18:30")
    assert chat.preferences.chosen["user:29:ada"].digest_at == "18:30"


async def test_timezone_shows_sets_and_refuses_unknown_zones_politely(chat: Chat) -> None:
    [reply] = await chat.texts("timezone")
    assert reply.startswith("I show times in **UTC**")
    [reply] = await chat.texts("timezone asia/tokyo")
    assert "**Asia/Tokyo** (it's 09:00 JST there now)" in reply
    [reply] = await chat.texts("timezone Nowhere/Special")
    assert "I don't know the time zone `Nowhere/Special`, so I kept **Asia/Tokyo**" in reply
    [reply] = await chat.texts("mute 1h")
    assert "until 2026-01-01 10:00 JST" in reply


async def test_quiet_hours_set_in_a_group_chat_carry_the_setters_time_zone(chat: Chat) -> None:
    await chat.texts("timezone Europe/Berlin")
    group = ConversationAccount(id=CONVERSATION, conversation_type="groupChat")
    await chat.texts(Activity(type=ActivityTypes.message, text="quiet 22-7", conversation=group))
    chosen = chat.preferences.chosen[f"conversation:{CONVERSATION}"]
    assert chosen.quiet == QuietHours("22:00", "07:00") and chosen.timezone == "Europe/Berlin"


async def test_settings_commands_wait_while_a_topic_is_open(chat: Chat) -> None:
    await chat.texts("watch")
    [reply, _] = await chat.texts("settings")
    assert reply.startswith("We're in the middle of setting up a watch.")
