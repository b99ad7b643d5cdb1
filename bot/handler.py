"""The Teams activity handler: records where every conversation lives, answers commands.

It translates Teams events into calls on the domain; it holds no state of its own beyond the
per-conversation turn locks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from weakref import WeakValueDictionary

from botbuilder.core import ConversationState, MessageFactory, TurnContext, UserState
from botbuilder.core.teams import TeamsActivityHandler
from botbuilder.schema import ActivityTypes

from dialogs.commands import COMMAND_NAMES, help_text, parse_command
from state.references import ConversationReferences

from .references import record_from_activity

log = logging.getLogger(__name__)

# Activities that prove the bot can talk in the conversation again (after a removal or a block).
_REACTIVATING = {ActivityTypes.message, ActivityTypes.invoke, ActivityTypes.message_reaction}


class ProactiveBot(TeamsActivityHandler):
    """Entry point of every inbound turn."""

    def __init__(
        self,
        *,
        bot_name: str,
        references: ConversationReferences,
        conversation_state: ConversationState,
        user_state: UserState,
    ) -> None:
        self._bot_name = bot_name
        self._references = references
        self._conversation_state = conversation_state
        self._user_state = user_state
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    @asynccontextmanager
    async def _conversation_turn(self, conversation_id: str) -> AsyncIterator[None]:
        """Turns of one conversation run one at a time, so their state writes never race."""
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[conversation_id] = lock
        async with lock:
            yield

    async def on_turn(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        conversation_id = activity.conversation.id if activity.conversation else ""
        async with self._conversation_turn(conversation_id):
            await self._remember(turn_context)
            await super().on_turn(turn_context)
            await self._conversation_state.save_changes(turn_context)
            await self._user_state.save_changes(turn_context)

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

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        TurnContext.remove_recipient_mention(turn_context.activity)
        text = turn_context.activity.text or ""
        value = turn_context.activity.value
        if not text.strip() and isinstance(value, dict) and isinstance(value.get("command"), str):
            text = value["command"]  # a card button (Action.Submit with data {"command": ...})
        command, _rest = parse_command(text)
        if command == "help":
            await turn_context.send_activity(MessageFactory.text(help_text(self._bot_name)))
        elif command in COMMAND_NAMES:
            await turn_context.send_activity(
                MessageFactory.text(f"`{command}` is not available in this version yet. Type `help` to see more.")
            )
        elif not command:
            await turn_context.send_activity(MessageFactory.text("Type `help` to see what I can do."))
        else:
            await turn_context.send_activity(
                MessageFactory.text(f"I don't know `{command}`. Type `help` to see what I can do.")
            )

    async def on_installation_update_add(self, turn_context: TurnContext) -> None:
        log.info("installed in conversation %s", turn_context.activity.conversation.id)

    async def on_installation_update_remove(self, turn_context: TurnContext) -> None:
        conversation_id = turn_context.activity.conversation.id
        await self._references.mark_inactive(conversation_id, "uninstalled")
        log.info("removed from conversation %s; marked inactive", conversation_id)
