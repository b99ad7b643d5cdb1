"""What the Teams handler calls: run the main dialog for one turn, and ask whether a topic is active."""

from __future__ import annotations

from typing import Any

from botbuilder.core import StatePropertyAccessor, TurnContext
from botbuilder.dialogs import ComponentDialog, Dialog, DialogSet, DialogState, DialogTurnStatus
from botbuilder.schema import ActivityTypes

DIALOG_STATE_PROPERTY = "DialogState"


async def run_main_dialog(dialog: Dialog, turn_context: TurnContext, dialog_state: StatePropertyAccessor) -> bool:
    """Continue the active topic, or begin `dialog` for a message when none is active.

    Returns True when a topic is still active after the turn (the user is mid-topic, e.g. `watch` is
    waiting for an answer). `dialog_state` is a property of the BotState that holds the stack (the
    caller saves that state after the turn): PrivateConversationState gives each member of a group
    chat or channel their own topic; ConversationState would make them share one.
    """
    dialogs = DialogSet(dialog_state)
    dialogs.add(dialog)
    dialog_context = await dialogs.create_context(turn_context)
    result = await dialog_context.continue_dialog()
    if result.status == DialogTurnStatus.Empty and turn_context.activity.type == ActivityTypes.message:
        await dialog_context.begin_dialog(dialog.id)
    return bool(dialog_context.stack)


def is_mid_topic(dialog_state: Any) -> bool:
    """True when a stored DialogState (the value of the dialog state property) has an active topic."""
    return isinstance(dialog_state, DialogState) and bool(dialog_state.dialog_stack)


async def mid_topic(turn_context: TurnContext, dialog_state: StatePropertyAccessor) -> bool:
    """`is_mid_topic` for the conversation of `turn_context` (a proactive turn works too)."""
    return is_mid_topic(await dialog_state.get(turn_context))


def pending_prompt(dialog_state: Any) -> str | None:
    """The text of the question the user has not answered yet (the innermost active prompt), if any."""
    state = dialog_state
    while isinstance(state, DialogState) and state.dialog_stack:
        instance_state = state.dialog_stack[0].state or {}
        options = instance_state.get("options")
        prompt = getattr(options, "prompt", None)
        if prompt is not None and getattr(prompt, "text", None):
            return str(prompt.text)
        state = instance_state.get(ComponentDialog.persisted_dialog_state)
    return None
