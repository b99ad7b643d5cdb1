"""The Teams activity handler: records where every conversation lives, runs the dialogs, welcomes.

It translates Teams events into calls on the domain. After each message turn it tells the engagement
state machine whether the user is mid-topic (in a personal chat: the conversation; in a group chat or
channel: that member, in that thread), which is what decides if proactive items wait. A channel is one
conversation for records, welcome, mute and removal, whichever thread an activity comes from. It remembers
each user's time zone from the `localTimezone` Teams puts on their activities (invalid names are ignored).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from botbuilder.core import BotState, ConversationState, InvokeResponse, TurnContext, UserState
from botbuilder.core.teams import TeamsActivityHandler
from botbuilder.dialogs import Dialog
from botbuilder.schema import (
    Activity,
    ActivityTypes,
    AdaptiveCardInvokeResponse,
    AdaptiveCardInvokeValue,
    ChannelAccount,
)
from botbuilder.schema.teams import TeamInfo
from msrest.exceptions import DeserializationError

from bot.delivery.proactive import ProactiveMessages
from bot.notices.acknowledge import ADAPTIVE, Acknowledgements, Pressed
from bot.notices.acknowledge import COMMAND as NOTICE_ACK
from bot.onboarding.team_members import WELCOME_TEAM_MEMBERS, welcome_members_key
from bot.turn_gate import TurnGate
from dialogs.runner import DIALOG_STATE_PROPERTY, pending_prompt, run_main_dialog
from dialogs.runner import mid_topic as mid_topic_of
from dialogs.welcome_card import welcome_payload
from scheduler.scheduler import Scheduler
from state.availability import is_unavailable
from state.engagement import Engagement
from state.model import GROUP_SCOPES, conversation_key, timezone_name, user_subject
from state.outbox import OutboxItem
from state.preferences import Preferences
from state.processed import ProcessedActivities
from state.references import ConversationReferences

from .activities import install_context, record_from_activity, team_id_of, tenant_of
from .alert_buttons import AlertButtons

log = logging.getLogger(__name__)

# Activities that prove the bot can talk in the conversation again (after a removal or a block).
_REACTIVATING = {ActivityTypes.message, ActivityTypes.invoke, ActivityTypes.message_reaction}
_TOPIC = "engagement.topic"  # turn_state key: (mid_topic, pending prompt) of a message turn
CARD_ACTION = "adaptiveCard/action"
# What the SDK's Teams invoke defaults raise for a value that does not fit the invoke's schema.
_MALFORMED = (DeserializationError, AttributeError, TypeError, KeyError, ValueError)
ERROR_TYPE = "application/vnd.microsoft.error"


def card_action_problem(value: Any) -> tuple[str, str] | None:
    """Why an `adaptiveCard/action` invoke value is not a Universal Action we can run: (code, message), or None.

    The same checks as the SDK's `_get_adaptive_card_invoke_value`, plus the shapes it assumes (objects)."""
    if value is None:
        return "BadRequest", "Missing value property"
    if not isinstance(value, dict):
        return "BadRequest", "Value property is not properly formed: it must be an object"
    action = value.get("action")
    if action is None:
        return "BadRequest", "Missing action property"
    if not isinstance(action, dict):
        return "BadRequest", "action must be an object"
    if action.get("type") != "Action.Execute":
        kind = action.get("type")
        named = kind if isinstance(kind, str) else type(kind).__name__
        return "NotSupported", f"The action '{named}' is not supported."
    if not isinstance(action.get("verb"), str | None):
        return "BadRequest", "action.verb must be a string"
    return None


def card_action_error(code: str, message: str) -> InvokeResponse:
    """The Universal Actions error answer: HTTP 400 with an `application/vnd.microsoft.error` body."""
    return InvokeResponse(status=400, body={"statusCode": 400, "type": ERROR_TYPE,
                                            "value": {"code": code, "message": message}})


class ProactiveBot(TeamsActivityHandler):
    """Entry point of every inbound turn."""

    def __init__(
        self,
        *,
        bot_name: str,
        references: ConversationReferences,
        conversation_state: ConversationState,
        user_state: UserState,
        dialog_state: BotState,
        dialog: Dialog,
        engagement: Engagement,
        proactive: ProactiveMessages,
        scheduler: Scheduler,
        welcome_team_members: bool = False,
        alert_buttons: AlertButtons | None = None,
        preferences: Preferences | None = None,
        turn_gate: TurnGate | None = None,
        acknowledgements: Acknowledgements | None = None,
        processed: ProcessedActivities | None = None,
        reached: Callable[[str, str], Awaitable[bool]] | None = None,
    ) -> None:
        """`reached(tenant, aad id)`: whether the bot itself is installing (or just installed) the app for that
        person (bot/reach), whose welcome then comes from there, before their notice."""
        self._reached = reached
        self._bot_name = bot_name
        self._processed = processed
        self._references = references
        self._states: tuple[BotState, ...] = (conversation_state, user_state, dialog_state)
        self._dialog_state = dialog_state
        self._dialog_accessor = dialog_state.create_property(DIALOG_STATE_PROPERTY)
        self._dialog = dialog
        self._engagement = engagement
        self._proactive = proactive
        self._scheduler = scheduler
        self._welcome_team_members = welcome_team_members
        self._alert_buttons = alert_buttons
        self._turns = turn_gate or TurnGate()
        self._preferences = preferences
        self._acknowledgements = acknowledgements

    async def on_turn(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        conversation_id = activity.conversation.id if activity.conversation else ""
        async with self._turns.turn(conversation_id):  # one at a time, so their state writes never race
            activity_id = self._dedup_id(activity)
            if activity_id is not None and self._processed is not None \
                    and await self._processed.seen(conversation_id, activity_id):
                log.info("activity %s was sent again after it was processed; answered without running it again",
                         activity_id)
                return
            await self._turn(turn_context, conversation_id)
            if activity_id is not None and self._processed is not None:
                try:  # the turn's work is saved: a failure here only risks running a re-send again
                    await self._processed.record(conversation_id, activity_id)
                except Exception as exc:
                    level = logging.DEBUG if is_unavailable(exc) else logging.WARNING  # an outage: logged once
                    log.log(level, "could not record activity %s as processed: %s", activity_id, exc)

    @staticmethod
    def _dedup_id(activity: Activity) -> str | None:
        """The id a re-send of this activity carries again (invokes are never re-sent: not deduplicated)."""
        if activity.type == ActivityTypes.invoke or not activity.id or len(activity.id) > 256:
            return None
        return str(activity.id)

    async def _turn(self, turn_context: TurnContext, conversation_id: str) -> None:
        activity = turn_context.activity
        await self._remember(turn_context)
        await super().on_turn(turn_context)
        for state in self._states:
            await state.save_changes(turn_context)
        topic = turn_context.turn_state.get(_TOPIC)
        if topic is not None:  # after saving, so a crash in between cannot replay the turn's answers
            await self._engagement.after_turn(conversation_id, mid_topic=topic[0], prompt=topic[1],
                                              user_id=_member(activity))

    async def _remember(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        record = record_from_activity(activity)
        if record is None:
            return
        installing = activity.type == ActivityTypes.installation_update and activity.action in (
            "add",
            "add-upgrade",
        )
        await self._references.upsert(record, reactivate=installing or activity.type in _REACTIVATING)
        await self._remember_timezone(activity)

    async def _remember_timezone(self, activity: Activity) -> None:
        """Store the sender's IANA zone when Teams reports a valid one (written only when it changes)."""
        sender = activity.from_property
        zone = timezone_name(getattr(activity, "local_timezone", None))
        if self._preferences is None or zone is None or sender is None or not sender.id:
            return
        await self._preferences.remember_timezone(user_subject(sender.id), zone)

    # -- messages ----------------------------------------------------------------------------------

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        TurnContext.remove_recipient_mention(turn_context.activity)
        value = turn_context.activity.value
        if isinstance(value, dict) and value.get("command") == "alert" and self._alert_buttons is not None:
            await self._alert_buttons(turn_context, value)
            mid_topic = bool(await mid_topic_of(turn_context, self._dialog_accessor))
        elif isinstance(value, dict) and value.get("command") == NOTICE_ACK and self._acknowledgements is not None:
            pressed = await self._acknowledge(turn_context, value)  # Action.Submit: a client without Execute
            await turn_context.send_activity(pressed.text)
            mid_topic = bool(await mid_topic_of(turn_context, self._dialog_accessor))
        else:
            mid_topic = await run_main_dialog(self._dialog, turn_context, self._dialog_accessor)
        prompt = pending_prompt(await self._dialog_accessor.get(turn_context)) if mid_topic else None
        turn_context.turn_state[_TOPIC] = (mid_topic, prompt)  # on_turn tells the engagement machine

    async def on_invoke_activity(self, turn_context: TurnContext) -> InvokeResponse:
        """Invokes as the protocol says: a malformed Universal Action gets 400 with an error body, an invoke
        whose value does not fit its Teams schema 400, an invoke nobody handles 501 (the SDK's answer)."""
        activity = turn_context.activity
        if activity.name == CARD_ACTION:
            problem = card_action_problem(activity.value)
            if problem is not None:
                log.info("refused an %s invoke: %s", CARD_ACTION, problem[1])
                return card_action_error(*problem)
            answer = await self.on_adaptive_card_invoke(turn_context, AdaptiveCardInvokeValue(**activity.value))
            # As plain JSON: msrest cannot serialise a text `value` (an activity.message answer)
            return InvokeResponse(status=200, body={"statusCode": answer.status_code, "type": answer.type,
                                                    "value": answer.value})
        try:  # the bot implements no other invoke: the SDK's defaults parse the value, then answer 501 (or 200)
            return await super().on_invoke_activity(turn_context)
        except _MALFORMED as exc:
            log.info("refused a %r invoke whose value does not fit its schema: %s", activity.name, exc)
            return InvokeResponse(status=400, body={"error": {
                "code": "BadRequest", "message": f"the value of a {activity.name!r} invoke is not properly formed"}})

    async def on_adaptive_card_invoke(
        self, turn_context: TurnContext, invoke_value: AdaptiveCardInvokeValue
    ) -> AdaptiveCardInvokeResponse:
        """Action.Execute from a card: alert buttons answer with the card that replaces the alert."""
        data = (invoke_value.action or {}).get("data") or {}
        if isinstance(data, dict) and data.get("command") == "alert" and self._alert_buttons is not None:
            return await self._alert_buttons.execute(turn_context, data)
        if isinstance(data, dict) and data.get("command") == NOTICE_ACK and self._acknowledgements is not None:
            pressed = await self._acknowledge(turn_context, data)  # the card changes for the presser only
            if pressed.card is not None:
                return AdaptiveCardInvokeResponse(status_code=200, type=ADAPTIVE, value=pressed.card)
            return AdaptiveCardInvokeResponse(status_code=200, type="application/vnd.microsoft.activity.message",
                                              value=pressed.text)
        return AdaptiveCardInvokeResponse(
            status_code=200, type="application/vnd.microsoft.activity.message",
            value="Type `help` to see what I can do.",
        )

    async def _acknowledge(self, turn_context: TurnContext, data: dict[str, Any]) -> Pressed:
        assert self._acknowledgements is not None
        activity = turn_context.activity
        sender = activity.from_property
        return await self._acknowledgements.press(data, str(sender.id), getattr(sender, "aad_object_id", None),
                                                  activity.conversation.id)

    # -- installation and welcome --------------------------------------------------------------------

    async def on_installation_update_add(self, turn_context: TurnContext) -> None:
        await self._welcome(turn_context)

    async def on_teams_members_added(
        self, teams_members_added: list[ChannelAccount], team_info: TeamInfo, turn_context: TurnContext
    ) -> None:
        bot_id = turn_context.activity.recipient.id if turn_context.activity.recipient else None
        if any(member.id == bot_id for member in teams_members_added):
            await self._welcome(turn_context)

    async def on_installation_update_remove(self, turn_context: TurnContext) -> None:
        conversation_id = conversation_key(turn_context.activity.conversation.id)
        await self._references.mark_inactive(conversation_id, "uninstalled")
        await self._proactive.conversation_removed(conversation_id)
        log.info("removed from conversation %s; marked inactive", conversation_id)

    async def on_teams_members_removed(
        self, teams_members_removed: list[ChannelAccount], team_info: TeamInfo, turn_context: TurnContext
    ) -> None:
        bot_id = turn_context.activity.recipient.id if turn_context.activity.recipient else None
        if any(member.id == bot_id for member in teams_members_removed):
            await self.on_installation_update_remove(turn_context)

    async def _welcome(self, turn_context: TurnContext) -> None:
        """Welcome once per conversation (a channel, not each thread; again after a removal), through the
        outbox like everything else."""
        activity = turn_context.activity
        conversation_id = conversation_key(activity.conversation.id)
        await self._engagement.fire(conversation_id, "installed")
        if not await self._engagement.mark_welcomed(conversation_id):
            return
        if await self._installed_by_us(activity):
            log.info("conversation %s: installed by the bot for a notice; that path welcomes", conversation_id)
            return
        known = await self._references.get(conversation_id)
        where = install_context(activity.channel_data, activity.conversation.conversation_type,
                                activity.from_property.name if activity.from_property else None, known)
        await self._proactive.enqueue([OutboxItem(
            payload=welcome_payload(self._bot_name, where), conversation_id=conversation_id,
            tenant_id=tenant_of(activity), category="welcome",
        )])
        log.info("welcomed conversation %s (%s)", conversation_id, where.scope)
        if self._welcome_team_members and where.scope == "team":
            await self._scheduler.schedule_in(
                0, WELCOME_TEAM_MEMBERS,
                {"conversation_id": conversation_id, "team": where.team, "installer": where.installer,
                 "team_id": team_id_of(activity.channel_data) or (known.team_id if known else None)},
                key=welcome_members_key(conversation_id),
            )


    async def _installed_by_us(self, activity: Activity) -> bool:
        if self._reached is None or activity.conversation.conversation_type != "personal":
            return False
        tenant = tenant_of(activity)
        aad = getattr(activity.from_property, "aad_object_id", None) if activity.from_property else None
        return bool(tenant and aad and await self._reached(tenant, aad))


def _member(activity: Activity) -> str | None:
    """Who has a topic of their own here: the sender in a group chat or channel, nobody in a personal chat."""
    conversation_type = activity.conversation.conversation_type if activity.conversation else None
    if conversation_type in GROUP_SCOPES and activity.from_property is not None and activity.from_property.id:
        return str(activity.from_property.id)
    return None
