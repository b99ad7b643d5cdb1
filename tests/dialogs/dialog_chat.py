"""A chat with the main dialog through the SDK's TestAdapter: send a message, get that turn's replies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonpickle
from botbuilder.core import BotState, ConversationState, MemoryStorage, TurnContext
from botbuilder.core.adapters import TestAdapter
from botbuilder.schema import Activity, ActivityTypes, ChannelAccount, ConversationAccount

from dialogs.main_dialog import MainDialog
from dialogs.memory import InMemoryAnalyses, InMemoryPreferences, InMemoryWatchBook
from dialogs.runner import DIALOG_STATE_PROPERTY, is_mid_topic, mid_topic, pending_prompt, run_main_dialog
from state.clock import FakeClock

USER = ChannelAccount(id="29:ada", name="Ada Lovelace", aad_object_id="aad-ada")
CONVERSATION = "a:conversation-1"


class PickledMemoryStorage(MemoryStorage):
    """MemoryStorage whose writes go through jsonpickle JSON (as the bot's SQLite storage does), so the
    dialog stack must survive serialisation between turns."""

    async def write(self, changes: dict[str, Any]) -> None:
        await super().write({key: jsonpickle.decode(jsonpickle.encode(value, keys=True), keys=True)
                             for key, value in changes.items()})


class Chat:
    """A conversation with the bot (Ada by default); `send` returns exactly the activities sent that turn."""

    def __init__(
        self,
        clock: FakeClock,
        bot_name: str = "PriceBot",
        storage: MemoryStorage | None = None,
        state_type: Callable[[MemoryStorage], BotState] = ConversationState,
    ) -> None:
        self.clock = clock
        self.watches = InMemoryWatchBook(max_watches=3)
        self.analyses = InMemoryAnalyses()
        self.preferences = InMemoryPreferences(clock)
        self.dialog = MainDialog(
            watches=self.watches,
            analyses=self.analyses,
            preferences=self.preferences,
            clock=clock,
            bot_name=bot_name,
        )
        self.storage = storage or MemoryStorage()
        self.state_type = state_type
        self.state = state_type(self.storage)
        self.accessor = self.state.create_property(DIALOG_STATE_PROPERTY)
        self.in_topic: bool | None = None  # what run_main_dialog returned for the last turn
        template = Activity(
            channel_id="msteams",
            service_url="https://smba.example/amer/",
            from_property=USER,
            recipient=ChannelAccount(id="28:bot", name="PriceBot"),
            conversation=ConversationAccount(id=CONVERSATION),
        )
        self.adapter = TestAdapter(self._turn, template)

    async def _turn(self, turn_context: TurnContext) -> None:
        self.in_topic = await run_main_dialog(self.dialog, turn_context, self.accessor)
        await self.state.save_changes(turn_context)

    async def send(self, message: str | Activity, sender: ChannelAccount | None = None) -> list[Activity]:
        if sender is not None:
            message = Activity(type=ActivityTypes.message, text=message) if isinstance(message, str) else message
            message.from_property = sender
        self.adapter.activity_buffer.clear()
        await self.adapter.receive_activity(message)
        replies = list(self.adapter.activity_buffer)
        self.adapter.activity_buffer.clear()
        return replies

    async def texts(self, message: str | Activity, sender: ChannelAccount | None = None) -> list[str]:
        """The text of every reply; a turn with no reply fails here (the bot must never be silent)."""
        replies = await self.send(message, sender)
        assert replies, f"no reply to {message!r}"
        return [reply.text or "" for reply in replies]

    async def press(self, **data: Any) -> list[str]:
        """Press a card button: Action.Submit delivers its data as `value`, with no text."""
        return await self.texts(Activity(type=ActivityTypes.message, value=data))

    async def stored_mid_topic(self, user: ChannelAccount = USER) -> bool:
        """Read the saved state the way a later, proactive turn would (fresh state object, no cache)."""
        context = self._proactive_context(user)
        state = self.state_type(self.storage)
        via_accessor = await mid_topic(context, state.create_property(DIALOG_STATE_PROPERTY))
        assert via_accessor == is_mid_topic(await self._stored_dialog_state(user))
        return via_accessor

    async def stored_pending_prompt(self, user: ChannelAccount = USER) -> str | None:
        return pending_prompt(await self._stored_dialog_state(user))

    async def _stored_dialog_state(self, user: ChannelAccount) -> Any:
        key = self.state_type(self.storage).get_storage_key(self._proactive_context(user))
        stored = (await self.storage.read([key])).get(key)
        return stored.get(DIALOG_STATE_PROPERTY) if isinstance(stored, dict) else None

    def _proactive_context(self, user: ChannelAccount) -> TurnContext:
        return TurnContext(
            self.adapter,
            Activity(
                type=ActivityTypes.event,
                channel_id="msteams",
                conversation=ConversationAccount(id=CONVERSATION),
                from_property=user,
            ),
        )


def card_of(activity: Activity) -> dict[str, Any]:
    """The Adaptive Card JSON of a reply (exactly one attachment expected)."""
    assert activity.attachments and len(activity.attachments) == 1, "expected one card"
    attachment = activity.attachments[0]
    assert attachment.content_type == "application/vnd.microsoft.card.adaptive"
    content: dict[str, Any] = attachment.content
    assert content["type"] == "AdaptiveCard" and content["version"] == "1.5"
    return content


def submit_actions(card: Any) -> list[dict[str, Any]]:
    """Every Action.Submit anywhere in a card, in document order."""
    found: list[dict[str, Any]] = []
    if isinstance(card, dict):
        if card.get("type") == "Action.Submit":
            found.append(card)
        for value in card.values():
            found += submit_actions(value)
    elif isinstance(card, list):
        for item in card:
            found += submit_actions(item)
    return found
