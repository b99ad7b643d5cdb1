"""`watch`: one-shot and multi-turn, re-prompts on bad answers, and help/cancel interruptions mid-topic."""

from __future__ import annotations

from decimal import Decimal

import pytest
from botbuilder.core import PrivateConversationState
from botbuilder.schema import ChannelAccount
from dialog_chat import CONVERSATION, Chat, PickledMemoryStorage

from dialogs.watch_dialog import MAX_BAD_ANSWERS
from state.clock import FakeClock
from state.model import Condition, UserRef, WatchView

ASK_PRODUCT = "Which product should I watch? For example `gadget`."


def ask_condition(product: str) -> str:
    return (f"When should I tell you about **{product}**? "
            "Say `below 20`, `above 20`, `any change`, or `5%` for a move of 5% either way.")


async def test_one_shot_watch_saves_without_questions(chat: Chat) -> None:
    assert await chat.texts("watch gadget below 10") == [
        "Done: I'll tell you when **gadget** drops below 10.00. Type `list` to see all your watches."
    ]
    assert chat.in_topic is False
    assert await chat.watches.list("29:ada") == [WatchView("gadget", Condition("below", Decimal("10")))]


@pytest.mark.parametrize("text", ["WATCH Gadget BELOW 10", "Watch gadget under $10", 'wAtCh "gadget" < 10'])
async def test_commands_and_conditions_are_case_insensitive(chat: Chat, text: str) -> None:
    [reply] = await chat.texts(text)
    assert "drops below 10.00" in reply
    [watch] = await chat.watches.list("29:ada")
    assert watch.product.lower() == "gadget"


async def test_multi_turn_watch_reprompts_bad_answers_then_saves(chat: Chat) -> None:
    assert await chat.texts("Watch") == [ASK_PRODUCT]
    assert chat.in_topic is True
    assert await chat.texts("x" * 101) == [
        "That name is 101 characters long; keep it under 101.\n\nWhich product should I watch?"
    ]
    assert await chat.texts("Super Gadget") == [ask_condition("Super Gadget")]
    [retry] = await chat.texts("soon")
    assert retry.startswith("I don't understand `soon` as a condition")
    assert retry.endswith("When should I tell you about **Super Gadget**?")
    [retry] = await chat.texts("-5%")
    assert "without a sign" in retry
    assert await chat.texts("5%") == [
        "Done: I'll tell you when **Super Gadget** moves by 5% or more (up or down). "
        "Type `list` to see all your watches."
    ]
    assert chat.in_topic is False
    assert not await chat.stored_mid_topic()
    assert await chat.watches.list("29:ada") == [WatchView("Super Gadget", Condition("percent", Decimal(5)))]


async def test_gives_up_politely_after_repeated_bad_answers(chat: Chat) -> None:
    await chat.texts("watch")
    await chat.texts("gadget")
    for attempt in range(1, MAX_BAD_ANSWERS):
        [retry] = await chat.texts(f"whenever {attempt}")
        assert "I don't understand" in retry
        assert chat.in_topic is True
    [gave_up] = await chat.texts("whenever, really")
    assert gave_up.startswith("I still couldn't use that, so I've stopped setting up a watch.")
    assert chat.in_topic is False
    assert await chat.watches.list("29:ada") == []


async def test_one_shot_with_bad_condition_keeps_product_and_asks_for_the_condition(chat: Chat) -> None:
    note, question = await chat.texts("watch gadget below abc")
    assert "`abc` isn't a price" in note
    assert question == ask_condition("gadget")
    assert chat.in_topic is True
    await chat.texts("above 12")
    assert await chat.watches.list("29:ada") == [WatchView("gadget", Condition("above", Decimal(12)))]


async def test_product_only_asks_for_the_condition(chat: Chat) -> None:
    assert await chat.texts('watch "super gadget"') == [ask_condition("super gadget")]


async def test_help_mid_watch_reasks_the_pending_question_and_the_watch_still_completes(chat: Chat) -> None:
    await chat.texts("watch")
    help_reply, question = await chat.texts("help")
    assert "`unwatch PRODUCT`" in help_reply
    assert "We're in the middle of setting up a watch" in help_reply
    assert question == ASK_PRODUCT
    assert chat.in_topic is True and await chat.stored_mid_topic()
    assert await chat.stored_pending_prompt() == ASK_PRODUCT

    assert await chat.texts("gadget") == [ask_condition("gadget")]
    _, question = await chat.texts("HELP")
    assert question == ask_condition("gadget"), "help must not count as an answer or lose the product"
    assert await chat.stored_pending_prompt() == ask_condition("gadget")
    [done] = await chat.texts("any change")
    assert done.startswith("Done: I'll tell you when **gadget** changes.")
    assert chat.in_topic is False
    assert await chat.stored_pending_prompt() is None


async def test_cancel_mid_watch_ends_the_topic_and_saves_nothing(chat: Chat) -> None:
    await chat.texts("watch")
    await chat.texts("gadget")
    assert await chat.stored_mid_topic()
    assert await chat.texts("Cancel") == ["OK, I've stopped setting up that watch; nothing was saved."]
    assert chat.in_topic is False
    assert not await chat.stored_mid_topic()
    assert await chat.watches.list("29:ada") == []
    assert await chat.texts("cancel") == ["There's nothing to cancel right now."]
    assert await chat.texts("below 10") == ["I don't know `below`. Try `help` to see what I can do."]


@pytest.mark.parametrize("cancel", [{"command": "cancel"}, {"command": "Stop"}])
async def test_cancel_button_mid_watch(chat: Chat, cancel: dict[str, str]) -> None:
    await chat.texts("watch")
    assert await chat.press(**cancel) == ["OK, I've stopped setting up that watch; nothing was saved."]
    assert not await chat.stored_mid_topic()


@pytest.mark.parametrize("interruption", ["list", "MUTE", {"command": "list"}, {"command": "unwatch", "product": "x"}])
async def test_other_commands_mid_watch_are_not_taken_as_answers(chat: Chat, interruption: object) -> None:
    await chat.texts("watch")
    if isinstance(interruption, dict):
        replies = await chat.press(**interruption)
    else:
        replies = await chat.texts(str(interruption))
    assert replies == ["We're in the middle of setting up a watch. Answer the question below first, or type `cancel`.",
                       ASK_PRODUCT]
    assert chat.in_topic is True
    assert await chat.texts("gadget") == [ask_condition("gadget")]


async def test_watch_buttons(chat: Chat) -> None:
    assert await chat.press(command="watch") == [ASK_PRODUCT]
    await chat.texts("cancel")
    [done] = await chat.press(command="watch", product="gadget", args="below 10")
    assert done.startswith("Done: I'll tell you when **gadget** drops below 10.00.")


async def test_watching_again_updates_and_the_book_can_refuse(chat: Chat) -> None:
    await chat.texts("watch gadget below 10")
    [updated] = await chat.texts("watch GADGET above 12")
    assert updated == "Updated: I'll now tell you when **GADGET** rises above 12.00."
    await chat.texts("watch b any")
    await chat.texts("watch c any")
    [refused] = await chat.texts("watch d any")
    assert refused.startswith("I couldn't add that watch: you are already watching 3 products.")
    assert len(await chat.watches.list("29:ada")) == 3


async def test_the_stack_survives_json_serialisation_between_turns(fake_clock: FakeClock) -> None:
    chat = Chat(fake_clock, storage=PickledMemoryStorage())
    await chat.texts("watch")
    await chat.texts("super gadget")
    _, question = await chat.texts("help")
    assert question == ask_condition("super gadget")
    assert await chat.stored_pending_prompt() == ask_condition("super gadget")
    await chat.texts("under 3")
    [watch] = await chat.watches.list("29:ada")
    assert watch == WatchView("super gadget", Condition("below", Decimal(3)))
    assert not await chat.stored_mid_topic()


async def test_the_watch_is_filed_under_the_sender(chat: Chat) -> None:
    await chat.texts("watch gadget any")
    assert chat.watches.users["29:ada"] == UserRef("29:ada", "aad-ada", "Ada Lovelace")
    assert chat.watches.conversations["29:ada"] == CONVERSATION


async def test_with_private_conversation_state_group_members_have_their_own_topics(fake_clock: FakeClock) -> None:
    chat = Chat(fake_clock, state_type=PrivateConversationState)
    bob = ChannelAccount(id="29:bob", name="Bob")
    assert await chat.texts("watch") == [ASK_PRODUCT]
    [bob_reply] = await chat.texts("list", sender=bob)
    assert bob_reply.startswith("You aren't watching any prices yet"), "Bob must not land in Ada's topic"
    assert await chat.stored_mid_topic() and not await chat.stored_mid_topic(bob)
    assert await chat.texts("gadget") == [ask_condition("gadget")]
    await chat.texts("any change")
    assert [w.product for w in await chat.watches.list("29:ada")] == ["gadget"]
    assert await chat.watches.list("29:bob") == []
