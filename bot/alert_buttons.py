"""The buttons on a price alert card: snooze, stop watching, mute — acknowledged by updating the card."""

from __future__ import annotations

import logging
from typing import Any

from botbuilder.core import MessageFactory, TurnContext
from botbuilder.schema import Activity, AdaptiveCardInvokeResponse

from dialogs.alert_card import acknowledged_payload
from state.preferences import Preferences, user_subject

from .watching import PriceWatcher

log = logging.getLogger(__name__)

SNOOZE_HOURS = {"1h": 1.0, "1d": 24.0}


class AlertButtons:
    def __init__(self, watcher: PriceWatcher, preferences: Preferences) -> None:
        self._watcher = watcher
        self._preferences = preferences

    async def __call__(self, turn_context: TurnContext, value: dict[str, Any]) -> None:
        """Action.Submit: act, then replace the card the button was on (or say the outcome)."""
        outcome = await self.outcome(turn_context.activity.from_property.id, value)
        product = str(value.get("product") or "")
        reply_to = turn_context.activity.reply_to_id
        if reply_to:
            update = Activity().deserialize(acknowledged_payload(f"Price alert for {product}", outcome))
            update.id = reply_to
            try:
                await turn_context.update_activity(update)
                return
            except Exception:  # the card may be gone or not updatable: say it instead
                log.warning("could not update alert card %s in place", reply_to, exc_info=True)
        await turn_context.send_activity(MessageFactory.text(outcome))

    async def execute(self, turn_context: TurnContext, data: dict[str, Any]) -> AdaptiveCardInvokeResponse:
        """Action.Execute (Universal Actions): act, and answer with the card that replaces the alert."""
        outcome = await self.outcome(turn_context.activity.from_property.id, data)
        card = acknowledged_payload(f"Price alert for {data.get('product') or ''}", outcome)["attachments"][0]
        return AdaptiveCardInvokeResponse(status_code=200, type=card["contentType"], value=card["content"])

    async def outcome(self, user_id: str, value: dict[str, Any]) -> str:
        """Do what the button says; the text to show the user."""
        action = value.get("action")
        try:
            watch_id = int(value.get("watchId", ""))
        except (TypeError, ValueError):
            return "That button is out of date; type `list` to see your watches."
        if action == "snooze" and value.get("args") in SNOOZE_HOURS:
            return await self._watcher.snooze(watch_id, user_id, SNOOZE_HOURS[str(value["args"])])
        if action == "stop":
            return await self._watcher.stop(watch_id, user_id)
        if action == "mute":
            await self._preferences.mute(user_subject(user_id), None)
            return "Notifications muted. Type `unmute` to turn them back on."
        return "I don't know that button; type `help`."
