"""The Acknowledge button of a notice (`"acknowledge": true`) and what a press does.

Teams has no read receipts, so a notice asks: its card gets a Universal Actions `Action.Execute` button (with an
`Action.Submit` fallback for clients without Universal Actions) whose data names only the broadcast. A press
records that person's acknowledgement once (state/notices.py) and answers that person alone with the card they
pressed, built again from the broadcast's own stored payload, its button replaced by "Acknowledged at 09:41 CET"
in their time zone. The button's data is checked like any input: a batch id that is not ours, or a conversation
the notice never went to, records nothing.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.metrics import Metrics
from state.broadcasts import BroadcastStore
from state.clock import Clock
from state.model import conversation_key, user_subject
from state.notices import NoticeStore
from state.preferences import Preferences

COMMAND = "notice.ack"
VERB = "noticeAcknowledge"
ADAPTIVE = "application/vnd.microsoft.card.adaptive"
UNIVERSAL_ACTIONS_VERSION = (1, 4)
_BATCH_ID = re.compile(r"[0-9a-f]{32}")


def with_acknowledge(payload: dict[str, Any], batch_id: str) -> dict[str, Any]:
    """The notice's message with an Acknowledge button: on its card, or on a card made of its text."""
    out = copy.deepcopy(payload)
    attachments = out.get("attachments") or []
    card_attachment = next((a for a in attachments if a.get("contentType") == ADAPTIVE), None)
    if card_attachment is None:
        card: dict[str, Any] = {"type": "AdaptiveCard", "version": "1.4", "body": [
            {"type": "TextBlock", "text": out.pop("text", ""), "wrap": True}]}
        out.pop("textFormat", None)
        out["attachments"] = [*attachments, {"contentType": ADAPTIVE, "content": card}]
    else:
        card = card_attachment["content"]
    if _version(card.get("version")) < UNIVERSAL_ACTIONS_VERSION:
        card["version"] = "1.4"
    data = {"command": COMMAND, "batchId": batch_id}
    card["actions"] = [*(card.get("actions") or []), {
        "type": "Action.Execute", "title": "Acknowledge", "verb": VERB, "data": data,
        "fallback": {"type": "Action.Submit", "title": "Acknowledge", "data": data}}]
    return out


def acknowledged_card(payload: dict[str, Any], note: str) -> dict[str, Any] | None:
    """The notice's card without its Acknowledge button and with `note` under it (None: no card)."""
    card = next((copy.deepcopy(a["content"]) for a in payload.get("attachments") or []
                 if a.get("contentType") == ADAPTIVE), None)
    if card is None:
        return None
    card["actions"] = [a for a in card.get("actions") or [] if not _is_acknowledge(a)]
    if not card["actions"]:
        del card["actions"]
    card["body"] = [*(card.get("body") or []), {"type": "TextBlock", "text": note, "wrap": True, "weight": "Bolder"}]
    return card


def _is_acknowledge(action: Any) -> bool:
    data = action.get("data") if isinstance(action, dict) else None
    return isinstance(data, dict) and data.get("command") == COMMAND


def _version(text: Any) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split("."))
    except ValueError:
        return (0,)


@dataclass(frozen=True)
class Pressed:
    """The answer to a press: the card that replaces the notice for the presser, else a message to them."""

    text: str
    card: dict[str, Any] | None = None
    recorded: bool = False


class Acknowledgements:
    """Presses of Acknowledge buttons."""

    def __init__(self, store: NoticeStore, broadcasts: BroadcastStore, preferences: Preferences, clock: Clock,
                 metrics: Metrics | None = None) -> None:
        self._store = store
        self._broadcasts = broadcasts
        self._preferences = preferences
        self._clock = clock
        self._metrics = metrics

    async def press(self, data: dict[str, Any], user_id: str, user_aad_id: str | None,
                    conversation_id: str) -> Pressed:
        """`user_id` pressed the button whose data is `data` in `conversation_id` (the activity's)."""
        batch_id = data.get("batchId")
        broadcast = None
        if isinstance(batch_id, str) and _BATCH_ID.fullmatch(batch_id):
            broadcast = await self._broadcasts.get(batch_id)
        if broadcast is None:
            return Pressed("This notice is no longer known, so it cannot be acknowledged.")
        acknowledgement = await self._store.acknowledge(broadcast.id, user_id, user_aad_id,
                                                        conversation_key(conversation_id))
        if acknowledgement is None:
            return Pressed("This notice was not sent here, so it cannot be acknowledged here.")
        if acknowledgement.first and self._metrics is not None:
            self._metrics.notice("acknowledged")
        zone = await self._preferences.timezone(user_subject(user_id))
        when = datetime.fromtimestamp(acknowledgement.at, ZoneInfo(zone)).strftime("%H:%M %Z")
        note = f"Acknowledged at {when}"
        return Pressed(note, acknowledged_card(broadcast.payload, note), recorded=acknowledgement.first)
