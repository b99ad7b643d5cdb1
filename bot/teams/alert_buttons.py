"""Alert card buttons as Teams delivers them: Action.Submit (a message) or Action.Execute (an invoke).

The action itself is `bot.prices.alert_actions`; this module answers the way each client expects:
the card the button was on is replaced in place (or the outcome is said in a new message).
"""

from __future__ import annotations

import logging
from typing import Any

from botbuilder.core import MessageFactory, TurnContext
from botbuilder.schema import Activity, AdaptiveCardInvokeResponse

from bot.prices.alert_actions import AlertActions
from dialogs.alert_card import acknowledged_payload

log = logging.getLogger(__name__)


class AlertButtons:
    def __init__(self, actions: AlertActions) -> None:
        self._actions = actions

    async def __call__(self, turn_context: TurnContext, value: dict[str, Any]) -> None:
        """Action.Submit: act, then replace the card the button was on (or say the outcome). A button inside a
        digest answers in a new message: replacing the card would wipe the digest's other updates."""
        outcome = await self._actions.outcome(turn_context.activity.from_property.id, value)
        product = str(value.get("product") or "")
        reply_to = turn_context.activity.reply_to_id
        if reply_to and not value.get("inDigest"):
            update = Activity().deserialize(acknowledged_payload(f"Price alert for {product}", outcome))
            update.id = reply_to
            try:
                await turn_context.update_activity(update)
                return
            except Exception:  # the card may be gone or not updatable: say it instead
                log.warning("could not update alert card %s in place", reply_to, exc_info=True)
        await turn_context.send_activity(MessageFactory.text(outcome))

    async def execute(self, turn_context: TurnContext, data: dict[str, Any]) -> AdaptiveCardInvokeResponse:
        """Action.Execute (Universal Actions): act, and answer with the card that replaces the alert (inside a
        digest: with a message, which leaves the digest as it is)."""
        outcome = await self._actions.outcome(turn_context.activity.from_property.id, data)
        if data.get("inDigest"):
            return AdaptiveCardInvokeResponse(status_code=200, type="application/vnd.microsoft.activity.message",
                                              value=outcome)
        card = acknowledged_payload(f"Price alert for {data.get('product') or ''}", outcome)["attachments"][0]
        return AdaptiveCardInvokeResponse(status_code=200, type=card["contentType"], value=card["content"])
