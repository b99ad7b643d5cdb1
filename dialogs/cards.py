"""Adaptive Cards (version 1.5, plain dicts) whose buttons send commands back as `{"command": ...}`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botbuilder.core import CardFactory
from botbuilder.schema import Attachment

from state.model import WatchView

SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
MAX_LISTED = 25  # keeps a list card far below Teams' ~28 KB message limit


def command_button(title: str, command: str, **data: str) -> dict[str, Any]:
    """An Action.Submit button that the bot reads like the typed `command` (see user_input.read_input)."""
    return {"type": "Action.Submit", "title": title, "data": {"command": command, **data}}


def adaptive_card(body: list[dict[str, Any]], actions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    card: dict[str, Any] = {"type": "AdaptiveCard", "$schema": SCHEMA, "version": "1.5", "body": body}
    if actions:
        card["actions"] = actions
    return card


def help_card() -> dict[str, Any]:
    """Quick-start buttons shown under the help text."""
    return adaptive_card(
        [{"type": "TextBlock", "text": "Try one of these:", "wrap": True}],
        [
            command_button("Watch a price", "watch"),
            command_button("My watches", "list"),
            command_button("Settings", "settings"),
            command_button("Help", "help"),
        ],
    )


def watch_list_card(watches: Sequence[WatchView]) -> dict[str, Any]:
    """One row per watch (product, condition, last price) with its own Unwatch button."""
    body: list[dict[str, Any]] = []
    for watch in watches[:MAX_LISTED]:
        detail = f"when it {watch.condition.describe()}"
        if watch.last_price is not None:
            detail += f" · last seen {watch.last_price}"
        body.append(
            {
                "type": "ColumnSet",
                "separator": bool(body),
                "columns": [
                    {
                        "type": "Column",
                        "width": "stretch",
                        "items": [
                            {"type": "TextBlock", "text": watch.product, "weight": "Bolder", "wrap": True},
                            {"type": "TextBlock", "text": detail, "isSubtle": True, "spacing": "None", "wrap": True},
                        ],
                    },
                    {
                        "type": "Column",
                        "width": "auto",
                        "verticalContentAlignment": "Center",
                        "items": [
                            {
                                "type": "ActionSet",
                                "actions": [command_button("Unwatch", "unwatch", product=watch.product)],
                            }
                        ],
                    },
                ],
            }
        )
    if len(watches) > MAX_LISTED:
        body.append({"type": "TextBlock", "text": f"…and {len(watches) - MAX_LISTED} more.", "wrap": True})
    return adaptive_card(body, [command_button("Watch another", "watch")])


def as_attachment(card: dict[str, Any]) -> Attachment:
    return CardFactory.adaptive_card(card)
