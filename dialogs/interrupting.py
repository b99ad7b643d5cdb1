"""A topic the user can interrupt (the SDK sample's CancelAndHelpDialog, for every multi-turn topic).

While the topic waits for an answer:
- `help` shows the help and re-asks the pending question; the dialog stack is untouched;
- `cancel` (or `stop`) ends the topic with a confirmation;
- any other bare command word, or any card button, is not taken as an answer: the user is told to
  finish or cancel first, and the question is asked again.
"""

from __future__ import annotations

from typing import Any

from botbuilder.core import MessageFactory
from botbuilder.dialogs import ComponentDialog, DialogContext, DialogTurnResult, DialogTurnStatus
from botbuilder.schema import ActivityTypes

from .commands import COMMAND_NAMES
from .user_input import read_input


class InterruptingDialog(ComponentDialog):
    """Base for multi-turn topics; `topic` completes "we're in the middle of …" and "I've stopped …"."""

    def __init__(self, dialog_id: str, *, help_text: str, topic: str, cancelled_text: str | None = None) -> None:
        super().__init__(dialog_id)
        self.help_text = help_text
        self.topic = topic
        self.cancelled_text = cancelled_text or f"OK, I've stopped {topic}."

    async def on_continue_dialog(self, inner_dc: DialogContext) -> Any:
        result = await self.interrupt(inner_dc)
        if result is not None:
            return result
        return await super().on_continue_dialog(inner_dc)

    async def interrupt(self, inner_dc: DialogContext) -> Any:
        """Handle `help`/`cancel`/stray commands; None lets the active prompt see the message."""
        context = inner_dc.context
        if context.activity.type != ActivityTypes.message:
            return None
        user_input = read_input(context.activity)
        if user_input.command == "help":
            await context.send_activity(
                MessageFactory.text(
                    f"{self.help_text}\n\nWe're in the middle of {self.topic}: answer the question below, "
                    "or type `cancel` to stop."
                )
            )
            return await self._ask_again(inner_dc)
        if user_input.command == "cancel":
            await context.send_activity(MessageFactory.text(self.cancelled_text))
            return await inner_dc.cancel_all_dialogs()
        if user_input.from_button or (user_input.command in COMMAND_NAMES and not user_input.rest):
            await context.send_activity(
                MessageFactory.text(
                    f"We're in the middle of {self.topic}. Answer the question below first, or type `cancel`."
                )
            )
            return await self._ask_again(inner_dc)
        return None

    async def _ask_again(self, inner_dc: DialogContext) -> Any:
        await inner_dc.reprompt_dialog()
        return DialogTurnResult(DialogTurnStatus.Waiting)
