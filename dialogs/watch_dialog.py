"""`watch`: ask for the product, then the condition, re-asking with the reason on bad answers; then save.

Options (plain JSON, so the stack survives any Storage): `{"product": str | None, "condition": dict | None,
"note": str | None}`; whatever is given is not asked again, so the one-shot `watch gadget below 10`
runs straight through in one turn. After MAX_BAD_ANSWERS bad answers to one question it gives up politely.
"""

from __future__ import annotations

from typing import Any

from botbuilder.core import MessageFactory
from botbuilder.dialogs import WaterfallDialog, WaterfallStepContext
from botbuilder.dialogs.prompts import PromptOptions, PromptValidatorContext, TextPrompt

from state.model import Condition

from . import replies
from .conditions import InputError, parse_condition, validate_product
from .interrupting import InterruptingDialog
from .ports import WatchBook
from .user_input import conversation_id, user_ref

MAX_BAD_ANSWERS = 3
PRODUCT_PROMPT = "watch.product"
CONDITION_PROMPT = "watch.condition"
_BAD_ANSWERS = "bad_answers"


def watch_options(
    product: str | None = None, condition: Condition | None = None, note: str | None = None
) -> dict[str, Any]:
    """Options for starting WatchDialog with what is already known."""
    return {"product": product, "condition": condition.to_json() if condition else None, "note": note}


class WatchDialog(InterruptingDialog):
    """Multi-turn (or one-shot) creation of a price watch, stored through `WatchBook`."""

    def __init__(self, watches: WatchBook, *, help_text: str, dialog_id: str = "watch") -> None:
        super().__init__(
            dialog_id,
            help_text=help_text,
            topic="setting up a watch",
            cancelled_text="OK, I've stopped setting up that watch; nothing was saved.",
        )
        self._watches = watches
        self.add_dialog(WaterfallDialog(f"{dialog_id}.steps", [self._product_step, self._condition_step,
                                                               self._save_step]))
        self.add_dialog(TextPrompt(PRODUCT_PROMPT, self._validate_product))
        self.add_dialog(TextPrompt(CONDITION_PROMPT, self._validate_condition))
        self.initial_dialog_id = f"{dialog_id}.steps"

    async def _product_step(self, step: WaterfallStepContext) -> Any:
        options = step.options if isinstance(step.options, dict) else {}
        if options.get("note"):
            await step.context.send_activity(MessageFactory.text(options["note"]))
        if options.get("product"):
            return await step.next(options["product"])
        return await step.prompt(
            PRODUCT_PROMPT,
            PromptOptions(
                prompt=MessageFactory.text("Which product should I watch? For example `gadget`."),
                retry_prompt=MessageFactory.text("Which product should I watch?"),
            ),
        )

    async def _condition_step(self, step: WaterfallStepContext) -> Any:
        try:
            product = validate_product(step.result if isinstance(step.result, str) else "")
        except InputError:
            return await self._give_up(step)
        step.values["product"] = product
        options = step.options if isinstance(step.options, dict) else {}
        if options.get("condition"):
            return await step.next(options["condition"])
        return await step.prompt(
            CONDITION_PROMPT,
            PromptOptions(
                prompt=MessageFactory.text(
                    f"When should I tell you about {replies.bold(product)}? "
                    "Say `below 20`, `above 20`, `any change`, or `5%` for a move of 5% either way."
                ),
                retry_prompt=MessageFactory.text(f"When should I tell you about {replies.bold(product)}?"),
            ),
        )

    async def _save_step(self, step: WaterfallStepContext) -> Any:
        try:
            if isinstance(step.result, dict):
                condition = Condition.from_json(step.result)
            else:
                condition = parse_condition(step.result if isinstance(step.result, str) else "")
        except (InputError, ValueError):
            return await self._give_up(step)
        activity = step.context.activity
        result = await self._watches.add(
            user_ref(activity), conversation_id(activity), str(step.values["product"]), condition
        )
        await step.context.send_activity(MessageFactory.text(replies.watch_saved(result)))
        return await step.end_dialog(result.status)

    async def _give_up(self, step: WaterfallStepContext) -> Any:
        await step.context.send_activity(MessageFactory.text(replies.gave_up(self.topic, replies.WATCH_EXAMPLE)))
        return await step.end_dialog(None)

    async def _validate_product(self, prompt: PromptValidatorContext) -> bool:
        return await _validate(prompt, validate_product)

    async def _validate_condition(self, prompt: PromptValidatorContext) -> bool:
        return await _validate(prompt, parse_condition)


async def _validate(prompt: PromptValidatorContext, parse: Any) -> bool:
    """Accept a good answer. On a bad one, say why and re-ask; after MAX_BAD_ANSWERS, accept it anyway
    so the waterfall's next step (which re-parses) ends the topic politely instead of asking forever."""
    text = prompt.recognized.value if prompt.recognized.succeeded else None
    try:
        parse(text if isinstance(text, str) else "")
        return True
    except InputError as exc:
        error = str(exc)
    bad_answers = int(prompt.state.get(_BAD_ANSWERS, 0)) + 1
    prompt.state[_BAD_ANSWERS] = bad_answers
    if bad_answers >= MAX_BAD_ANSWERS:
        return True
    question = prompt.options.retry_prompt.text if prompt.options.retry_prompt else ""
    await prompt.context.send_activity(MessageFactory.text(f"{error}\n\n{question}".strip()))
    return False

