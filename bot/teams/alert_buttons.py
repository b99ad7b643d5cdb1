"""Alert card buttons as Teams delivers them: Action.Submit (a message) or Action.Execute (an invoke).

The action itself is `bot.prices.alert_actions`; this module answers the way each client expects. The watch's
owner sees the card the button was on replaced (or, inside a digest, the outcome in a new message). Anyone else
changes nothing: the card stays as it is for everyone, and they get an answer meant for them (Action.Execute: a
message shown only to them; Action.Submit: a new message that @mentions them in a group chat or channel). The
alert's refresh (`alertOwnerView`, Universal Actions' user-specific view) gives the owner the card with buttons.
"""

from __future__ import annotations

import logging
from typing import Any

from botbuilder.core import TurnContext
from botbuilder.schema import Activity, AdaptiveCardInvokeResponse

from bot.prices.alert_actions import AlertActions
from dialogs.alert_card import acknowledged_payload, owner_card
from dialogs.mentions import with_mention
from state.model import GROUP_SCOPES, UserRef

log = logging.getLogger(__name__)
MESSAGE = "application/vnd.microsoft.activity.message"


class AlertButtons:
    def __init__(self, actions: AlertActions) -> None:
        self._actions = actions

    async def __call__(self, turn_context: TurnContext, value: dict[str, Any]) -> None:
        """Action.Submit: act, then replace the card the button was on (its owner only). A button inside a digest
        answers in a new message: replacing the card would wipe the digest's other updates."""
        presser = turn_context.activity.from_property
        pressed = await self._actions.press(presser.id, value)
        reply_to = turn_context.activity.reply_to_id
        if pressed.by_owner and reply_to and not value.get("inDigest"):
            update = Activity().deserialize(acknowledged_payload(pressed.summary, pressed.text))
            update.id = reply_to
            try:
                await turn_context.update_activity(update)
                return
            except Exception:  # the card may be gone or not updatable: say it instead
                log.warning("could not update alert card %s in place", reply_to, exc_info=True)
        payload: dict[str, Any] = {"type": "message", "text": pressed.text}
        conversation = turn_context.activity.conversation
        if conversation is not None and conversation.conversation_type in GROUP_SCOPES:
            payload = with_mention(payload, UserRef(presser.id, name=presser.name), ":")
        await turn_context.send_activity(Activity().deserialize(payload))

    async def execute(self, turn_context: TurnContext, data: dict[str, Any]) -> AdaptiveCardInvokeResponse:
        """Action.Execute (Universal Actions): the owner's view on refresh; else act, and answer the owner with the
        card that replaces the alert (inside a digest: with a message, which leaves the digest as it is), anyone
        else with a message shown only to them."""
        user_id = turn_context.activity.from_property.id
        if data.get("action") == "view":  # the refresh of an alert in a group chat or channel
            watch = await self._actions.owned(user_id, data)
            if watch is None:
                return AdaptiveCardInvokeResponse(status_code=200, type=MESSAGE,
                                                  value="Only the person who set up this watch can use its buttons.")
            card = owner_card(watch.id, watch.product, watch.condition, watch.last_price)
            return AdaptiveCardInvokeResponse(status_code=200, type=card["contentType"], value=card["content"])
        pressed = await self._actions.press(user_id, data)
        if not pressed.by_owner or data.get("inDigest"):
            return AdaptiveCardInvokeResponse(status_code=200, type=MESSAGE, value=pressed.text)
        card = acknowledged_payload(pressed.summary, pressed.text)["attachments"][0]
        return AdaptiveCardInvokeResponse(status_code=200, type=card["contentType"], value=card["content"])
