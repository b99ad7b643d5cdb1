"""One reading of an inbound message, typed or from a card button, shared by every dialog.

A button is an Adaptive Card `Action.Submit` whose data is `{"command": "unwatch", "product": "gadget"}`
(optionally `"args": "2h"`); Teams delivers that data as `activity.value` with no text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from state.model import GROUP_SCOPES, UserRef, conversation_key, conversation_subject, user_subject

from .commands import parse_command

ALIASES = {"?": "help", "commands": "help", "stop": "cancel", "watches": "list", "analyse": "analyze"}


@dataclass(frozen=True)
class UserInput:
    """`command` is the lower-case first word ('' when empty); `product` only comes from buttons."""

    command: str
    rest: str = ""
    product: str | None = None
    from_button: bool = False

    @property
    def argument(self) -> str:
        """The product for product commands: the button's `product`, else the typed rest."""
        return self.product if self.product is not None else self.rest


def read_input(activity: Any) -> UserInput:
    """Typed text wins; otherwise a card button's `value.command`; otherwise empty input."""
    text = (getattr(activity, "text", None) or "").strip()
    if text:
        command, rest = parse_command(text)
        return UserInput(ALIASES.get(command, command), rest)
    value = getattr(activity, "value", None)
    if isinstance(value, dict) and isinstance(value.get("command"), str):
        command, rest = parse_command(value["command"])
        args = value.get("args")
        if isinstance(args, str) and args.strip():
            rest = f"{rest} {args.strip()}".strip()
        product = value.get("product")
        product = product.strip() if isinstance(product, str) and product.strip() else None
        return UserInput(ALIASES.get(command, command), rest, product, from_button=True)
    return UserInput("")


def user_ref(activity: Any) -> UserRef:
    """The sender of the activity."""
    sender = activity.from_property
    return UserRef(
        id=sender.id,
        aad_object_id=getattr(sender, "aad_object_id", None) or None,
        name=getattr(sender, "name", None) or None,
    )


def conversation_id(activity: Any) -> str:
    """Where later messages about this request go: the conversation, or for a channel thread the channel
    (proactive messages there start a new post)."""
    return conversation_key(str(activity.conversation.id))


def mute_subject(activity: Any) -> str:
    """Who a `mute` applies to: the user in a 1:1 chat, the whole group chat or channel (every thread) there."""
    conversation = activity.conversation
    if getattr(conversation, "conversation_type", None) in GROUP_SCOPES:
        return conversation_subject(conversation_key(str(conversation.id)))
    return user_subject(str(activity.from_property.id))
