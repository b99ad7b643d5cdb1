"""Is the user mid-topic? The per-conversation engagement state machine and the interjection policy.

States (persisted in the `engagement` table, one row per conversation):
  idle      nothing pending: proactive items go out now;
  in_topic  a dialog is active / a question is pending: items are held and released when it ends;
  inactive  the bot was removed or blocked: items are dropped.
The machine is `transitions`' AsyncMachine; its callbacks (e.g. "release what was held when the topic
ends") are injected, so this module stays free of the SDK.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from transitions.extensions.asyncio import AsyncMachine

from scheduler.clock import Clock

from .db import Database, chunks, marks

log = logging.getLogger(__name__)

STATES = ["idle", "in_topic", "inactive"]
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "topic_started", "source": ["idle", "in_topic"], "dest": "in_topic"},
    {"trigger": "topic_ended", "source": "in_topic", "dest": "idle", "after": "released"},
    {"trigger": "removed", "source": "*", "dest": "inactive"},
    {"trigger": "installed", "source": "inactive", "dest": "idle"},
    # events that change nothing in these states (internal transitions, so none is "invalid")
    {"trigger": "topic_ended", "source": ["idle", "inactive"], "dest": None},
    {"trigger": "topic_started", "source": "inactive", "dest": None},
    {"trigger": "installed", "source": ["idle", "in_topic"], "dest": None},
]

Action = Literal["deliver", "hold", "drop"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def decide(state: str, *, category: str, urgent: bool, muted: bool, deferred: str | None = None) -> Decision:
    """The interjection rules, as one table (see tests/state/test_engagement.py).

    `deferred` names the user's schedule that asks a non-urgent notification to wait ("quiet hours",
    "daily digest"); results, progress and welcomes are never deferred."""
    if state == "inactive":
        return Decision("drop", "the bot cannot reach this conversation")
    if category == "notification" and muted:
        return Decision("drop", "notifications are muted")
    if category in ("welcome", "progress", "reply") or urgent:
        return Decision("deliver", "never held" if not urgent else "urgent")
    if category == "notification" and deferred:
        return Decision("hold", deferred)
    if state == "in_topic":
        return Decision("hold", "the user is mid-topic")
    return Decision("deliver", "the user is idle")


class Conversation:
    """The machine's model for one conversation; `released` is the topic-ended hook."""

    state: str

    def __init__(self, conversation_id: str, on_released: Callable[[str], Awaitable[object]]) -> None:
        self.conversation_id = conversation_id
        self._on_released = on_released

    async def released(self) -> None:
        await self._on_released(self.conversation_id)

    # triggers added by the machine
    topic_started: Callable[[], Awaitable[bool]]
    topic_ended: Callable[[], Awaitable[bool]]
    removed: Callable[[], Awaitable[bool]]
    installed: Callable[[], Awaitable[bool]]


class Engagement:
    """Loads a conversation's state, fires a trigger through the machine, saves the result."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._machine = AsyncMachine(
            model=None, states=STATES, transitions=TRANSITIONS, initial="idle",
            auto_transitions=False,
        )
        self._on_released: Callable[[str], Awaitable[object]] = _nothing
        self._states: dict[str, str] = {}  # write-through cache: this process is the only writer

    def on_topic_ended(self, callback: Callable[[str], Awaitable[object]]) -> None:
        """What to do when a conversation's topic ends (release held items)."""
        self._on_released = callback

    async def state(self, conversation_id: str) -> str:
        cached = self._states.get(conversation_id)
        if cached is not None:
            return cached
        row = await self._db.fetchone("SELECT state FROM engagement WHERE conversation_id = ?", (conversation_id,))
        state = str(row["state"]) if row else "idle"
        if len(self._states) > 100_000:
            self._states.clear()
        self._states[conversation_id] = state
        return state

    async def states(self, conversation_ids: Iterable[str]) -> dict[str, str]:
        """`state()` for many conversations, reading the uncached ones in one query each 500."""
        wanted = list(dict.fromkeys(conversation_ids))
        missing = [c for c in wanted if c not in self._states]
        for chunk in chunks(missing):
            rows = await self._db.fetchall(
                f"SELECT conversation_id, state FROM engagement WHERE conversation_id IN ({marks(len(chunk))})", chunk
            )
            found = {r["conversation_id"]: str(r["state"]) for r in rows}
            if len(self._states) > 100_000:
                self._states.clear()
            for conversation_id in chunk:
                self._states[conversation_id] = found.get(conversation_id, "idle")
        return {c: self._states.get(c, "idle") for c in wanted}

    async def pending_prompt(self, conversation_id: str) -> str | None:
        row = await self._db.fetchone(
            "SELECT pending_prompt FROM engagement WHERE conversation_id = ?", (conversation_id,)
        )
        return str(row["pending_prompt"]) if row and row["pending_prompt"] else None

    async def fire(self, conversation_id: str, trigger: str, *, prompt: str | None = None) -> str:
        """Run `trigger` for a conversation; returns the new state. Unknown-in-state triggers are ignored."""
        model = Conversation(conversation_id, self._on_released)
        self._machine.add_model(model, initial=await self.state(conversation_id))
        try:
            before = model.state
            await getattr(model, trigger)()
            after = model.state
            if after != before or trigger == "topic_started":
                await self._save(conversation_id, after, prompt if after == "in_topic" else None)
            if after != before:
                log.debug("conversation %s: %s → %s (%s)", conversation_id, before, after, trigger)
            return after
        finally:
            self._machine.remove_model(model)

    async def after_turn(self, conversation_id: str, *, mid_topic: bool, prompt: str | None) -> str:
        """Called at the end of every message turn with whether a dialog is still waiting for the user.

        A message from a conversation the bot had lost (removed, blocked) shows it is reachable again."""
        if await self.state(conversation_id) == "inactive":
            await self.fire(conversation_id, "installed")
        return await self.fire(conversation_id, "topic_started" if mid_topic else "topic_ended", prompt=prompt)

    async def mark_welcomed(self, conversation_id: str) -> bool:
        """Record the welcome; False if this conversation was already welcomed (since its last install)."""
        changed = await self._db.execute(
            "INSERT INTO engagement (conversation_id, welcomed, updated_at) VALUES (?, 1, ?) "
            "ON CONFLICT (conversation_id) DO UPDATE SET welcomed = 1, updated_at = excluded.updated_at "
            "WHERE engagement.welcomed = 0",
            (conversation_id, self._clock.now().timestamp()),
        )
        return changed > 0

    async def forget_welcome(self, conversation_id: str) -> None:
        """After a removal, a re-install welcomes again."""
        await self._db.execute("UPDATE engagement SET welcomed = 0 WHERE conversation_id = ?", (conversation_id,))

    async def _save(self, conversation_id: str, state: str, prompt: str | None) -> None:
        self._states.pop(conversation_id, None)
        await self._db.execute(
            "INSERT INTO engagement (conversation_id, state, pending_prompt, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (conversation_id) DO UPDATE SET state = excluded.state, "
            "pending_prompt = excluded.pending_prompt, updated_at = excluded.updated_at",
            (conversation_id, state, prompt, self._clock.now().timestamp()),
        )


async def _nothing(conversation_id: str) -> None:
    return None
