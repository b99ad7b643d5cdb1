"""Single-turn commands: help, list/unwatch (typed and by button), analyze/status, mute/unmute, unknown input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botbuilder.schema import Activity, ActivityTypes, ConversationAccount
from dialog_chat import CONVERSATION, USER, Chat, card_of, submit_actions

from dialogs.commands import COMMANDS, help_text
from dialogs.user_input import mute_subject
from state.model import UNTIL_UNMUTED, Condition, UserRef, WatchView


@pytest.mark.parametrize("text", ["help", "HELP", "Help me", "?"])
async def test_help_lists_every_command_with_quick_start_buttons(chat: Chat, text: str) -> None:
    [reply] = await chat.send(text)
    assert reply.text == help_text("PriceBot")
    assert all(f"`{c.usage}`" in reply.text for c in COMMANDS)
    buttons = submit_actions(card_of(reply))
    assert [b["data"]["command"] for b in buttons] == ["watch", "list", "settings", "help"]
    assert chat.in_topic is False


async def test_help_button(chat: Chat) -> None:
    assert await chat.press(command="help") == [help_text("PriceBot")]


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("foo", "I don't know `foo`. Try `help` to see what I can do."),
        ("wacth gadget", "I don't know `wacth`. Did you mean `watch`? Try `help` to see what I can do."),
        ("*bold*", "I don't know `\\*bold\\*`. Try `help` to see what I can do."),
        ("", "Type `help` to see what I can do."),
        ("   ", "Type `help` to see what I can do."),
    ],
)
async def test_unknown_or_empty_input_gets_an_answer(chat: Chat, text: str, reply: str) -> None:
    assert await chat.texts(text) == [reply]
    assert chat.in_topic is False


async def test_a_button_without_a_command_is_not_met_with_silence(chat: Chat) -> None:
    assert await chat.texts(Activity(type=ActivityTypes.message, value={"unexpected": 1})) == [
        "Type `help` to see what I can do."
    ]


async def test_non_message_activities_neither_start_nor_disturb_a_topic(chat: Chat) -> None:
    assert await chat.send(Activity(type=ActivityTypes.conversation_update)) == []
    assert chat.in_topic is False
    await chat.texts("watch")
    assert await chat.send(Activity(type=ActivityTypes.message_reaction)) == []
    assert chat.in_topic is True
    assert await chat.texts("gadget")


async def test_list_shows_each_watch_with_an_unwatch_button(chat: Chat) -> None:
    assert await chat.texts("list") == ["You aren't watching any prices yet. Try `watch gadget below 20`."]
    await chat.texts("watch gadget below 10")
    await chat.texts('watch "super gadget" 5%')
    [reply] = await chat.send("LIST")
    assert reply.text == "You're watching 2 products."
    card = card_of(reply)
    assert card["fallbackText"] == (
        "You're watching 2 products:\n- **gadget**: when it drops below 10.00\n"
        "- **super gadget**: when it moves by 5% or more (up or down)"
    )
    assert [b["data"] for b in submit_actions(card)] == [
        {"command": "unwatch", "product": "gadget"},
        {"command": "unwatch", "product": "super gadget"},
        {"command": "watch"},
    ]


async def test_unwatch_by_button_and_by_typing(chat: Chat) -> None:
    await chat.texts("watch gadget below 10")
    await chat.texts("watch super gadget any")
    [reply] = await chat.send("list")
    unwatch_gadget = submit_actions(card_of(reply))[0]
    assert await chat.press(**unwatch_gadget["data"]) == ["Stopped watching **gadget**."]
    assert await chat.watches.list("29:ada") == [WatchView("super gadget", Condition("any"))]
    assert await chat.texts("unwatch gadget") == [
        "You weren't watching **gadget**. Type `list` to see what you watch."
    ]
    assert await chat.texts("Unwatch SUPER GADGET") == ["Stopped watching **SUPER GADGET**."]
    assert await chat.watches.list("29:ada") == []


async def test_bare_unwatch_offers_the_list_or_says_there_is_nothing(chat: Chat) -> None:
    assert await chat.texts("unwatch") == ["You aren't watching anything, so there's nothing to unwatch."]
    await chat.texts("watch gadget below 10")
    [reply] = await chat.send("unwatch")
    assert reply.text.startswith("Which one?")
    assert submit_actions(card_of(reply))[0]["data"] == {"command": "unwatch", "product": "gadget"}


async def test_analyze_relays_the_back_end_message_and_status_lists_running(chat: Chat) -> None:
    assert await chat.texts("status") == ["No analyses are running. Start one with `analyze PRODUCT`."]
    assert await chat.texts("Analyze gadget") == [
        "Started analysing **gadget**. I'll message you when it's done; `status` shows progress."
    ]
    assert chat.analyses.started == [(UserRef(USER.id, "aad-ada", "Ada Lovelace"), CONVERSATION, "gadget")]
    assert await chat.texts("analyse GADGET") == [
        "I'm already analysing **GADGET**; I'll message you when it's done."
    ]
    await chat.press(command="analyze", product="super gadget")
    assert await chat.texts("STATUS") == [
        "Analyses still running (2):\n- **gadget**\n- **super gadget**\nType `cancel PRODUCT` to stop one."
    ]
    chat.analyses.finish("29:ada", "gadget")
    assert await chat.texts("status") == [
        "Analyses still running (1):\n- **super gadget**\nType `cancel PRODUCT` to stop one."
    ]


async def test_analyze_needs_a_product(chat: Chat) -> None:
    assert await chat.texts("analyze") == ["Which product? Type `analyze PRODUCT`, e.g. `analyze gadget`."]
    assert chat.analyses.started == []


async def test_cancel_when_idle_stops_a_named_analysis_or_says_there_is_nothing(chat: Chat) -> None:
    await chat.texts("analyze gadget")
    assert await chat.texts("cancel") == [
        "There's nothing to cancel right now. To stop a running analysis, type `cancel PRODUCT` "
        "(`status` lists them)."
    ]
    assert await chat.texts("cancel widget") == ["No analysis of **widget** is running. Type `status`."]
    assert await chat.texts("cancel Gadget") == ["Stopped the analysis of **Gadget**."]
    assert await chat.analyses.running("29:ada") == []
    assert await chat.texts("cancel") == ["There's nothing to cancel right now."]


async def test_mute_for_a_duration_then_it_expires(chat: Chat) -> None:
    assert await chat.texts("Mute 2h") == [
        "Muted your notifications for 2 hours, until 2026-01-01 02:00 UTC. "
        "Type `unmute` to turn them back on sooner."
    ]
    assert chat.preferences.mutes == {"user:29:ada": datetime(2026, 1, 1, 2, tzinfo=UTC)}
    assert await chat.preferences.muted_until("user:29:ada") == datetime(2026, 1, 1, 2, tzinfo=UTC)
    chat.clock.advance(timedelta(hours=2).total_seconds())
    assert await chat.preferences.muted_until("user:29:ada") is None
    assert await chat.texts("unmute") == ["Your notifications weren't muted; nothing to do."]


async def test_mute_until_unmute(chat: Chat) -> None:
    chat.clock.advance(timedelta(days=400).total_seconds())
    assert await chat.texts("mute") == ["Muted your notifications until you type `unmute`."]
    assert await chat.preferences.muted_until("user:29:ada") == UNTIL_UNMUTED
    assert await chat.texts("UNMUTE") == ["Your notifications are back on."]
    assert await chat.preferences.muted_until("user:29:ada") is None


@pytest.mark.parametrize("conversation_type", ["groupChat", "channel"])
async def test_mute_in_a_group_chat_or_channel_mutes_the_conversation(chat: Chat, conversation_type: str) -> None:
    group = ConversationAccount(id=CONVERSATION, conversation_type=conversation_type)
    [reply] = await chat.texts(Activity(type=ActivityTypes.message, text="mute 1d", conversation=group))
    assert reply.startswith("Muted notifications in this conversation for 1 day, until 2026-01-02 00:00 UTC")
    assert list(chat.preferences.mutes) == [f"conversation:{CONVERSATION}"]
    assert await chat.texts(Activity(type=ActivityTypes.message, text="unmute", conversation=group)) == [
        "Notifications in this conversation are back on."
    ]


async def test_mute_subjects_match_the_preferences_store() -> None:
    from state import model as preferences
    personal = Activity(from_property=USER, conversation=ConversationAccount(id="c", conversation_type="personal"))
    group = Activity(from_property=USER, conversation=ConversationAccount(id="c", conversation_type="groupChat"))
    assert mute_subject(personal) == preferences.user_subject(USER.id)
    assert mute_subject(group) == preferences.conversation_subject("c")


async def test_mute_by_button_uses_the_clock(chat: Chat) -> None:
    chat.clock.advance(90)
    [reply] = await chat.press(command="mute", args="30m")
    assert "until 2026-01-01 00:31 UTC" in reply
    assert chat.preferences.mutes == {"user:29:ada": datetime(2026, 1, 1, 0, 31, 30, tzinfo=UTC)}


@pytest.mark.parametrize("text", ["mute soon", "mute 0m", "mute 31d"])
async def test_bad_mute_durations_are_explained_and_change_nothing(chat: Chat, text: str) -> None:
    [reply] = await chat.texts(text)
    assert "try `mute 30m`, `mute 2h` or `mute 1d`" in reply
    assert chat.preferences.mutes == {}
