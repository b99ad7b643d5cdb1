"""Is the user mid-topic? The engagement state machine and the interjection policy.

States (persisted; the machine is `transitions`' AsyncMachine):
  idle      nothing pending: proactive items go out now;
  in_topic  a dialog is active / a question is pending: items are held and released when it ends;
  inactive  the bot was removed or blocked: items are dropped.
A personal chat has one person, so the conversation itself is idle or in_topic (`engagement` table, one
row per conversation). A group chat or channel is only ever idle or inactive as a whole: there, each
member is idle or in_topic on their own (`engagement_members`, one row per member per thread; a member is
mid-topic in a channel while a question of theirs is open in any of its threads), and only items
addressed to that member wait for them. The callbacks (e.g. "release what was held when the topic
ends") are injected, so this module stays free of the SDK.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from transitions.extensions.asyncio import AsyncMachine

from state.clock import Clock

from .db import Database, chunks, marks
from .model import conversation_key

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


Released = Callable[[str, str | None], Awaitable[object]]
"""Called when a topic ends: (conversation id, None) for a personal chat, (conversation id, member's user id)
for one member of a group chat or channel (the conversation id is the channel's, not the thread's)."""


class Conversation:
    """The machine's model for one conversation (or one member of one). Its `released` callback only notes that
    the topic ended: what follows (releasing held items) runs after the new state is stored, and only if this
    process's write won."""

    state: str

    def __init__(self) -> None:
        self.topic_ended_here = False

    async def released(self) -> None:
        self.topic_ended_here = True

    # triggers added by the machine
    topic_started: Callable[[], Awaitable[bool]]
    topic_ended: Callable[[], Awaitable[bool]]
    removed: Callable[[], Awaitable[bool]]
    installed: Callable[[], Awaitable[bool]]


_CAS_ATTEMPTS = 20


class Engagement:
    """Loads a conversation's state, fires a trigger through the machine, saves the result."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._machine = AsyncMachine(
            model=None, states=STATES, transitions=TRANSITIONS, initial="idle",
            auto_transitions=False,
        )
        self._on_released: Released = _nothing
        # (state, trigger) pairs the machine maps to an internal transition (nothing changes, no callback)
        self._inert = {(state, trigger) for state in STATES for trigger in {t["trigger"] for t in TRANSITIONS}
                       if all(t.dest is None for t in self._machine.get_transitions(trigger, source=state))}

    def on_topic_ended(self, callback: Released) -> None:
        """What to do when a topic ends (release held items): see `Released`."""
        self._on_released = callback

    async def state(self, conversation_id: str) -> str:
        """Read from the database every time: turns of one conversation may land on any replica."""
        row = await self._db.fetchone("SELECT state FROM engagement WHERE conversation_id = ?", (conversation_id,))
        return str(row["state"]) if row else "idle"

    async def states(self, conversation_ids: Iterable[str]) -> dict[str, str]:
        """`state()` for many conversations, one query each 500."""
        wanted = list(dict.fromkeys(conversation_ids))
        found: dict[str, str] = {}
        for chunk in chunks(wanted):
            rows = await self._db.fetchall(
                f"SELECT conversation_id, state FROM engagement WHERE conversation_id IN ({marks(len(chunk))})", chunk
            )
            found.update((r["conversation_id"], str(r["state"])) for r in rows)
        return {c: found.get(c, "idle") for c in wanted}

    async def pending_prompt(self, conversation_id: str) -> str | None:
        row = await self._db.fetchone(
            "SELECT pending_prompt FROM engagement WHERE conversation_id = ?", (conversation_id,)
        )
        return str(row["pending_prompt"]) if row and row["pending_prompt"] else None

    async def _stored(self, conversation_id: str) -> str | None:
        row = await self._db.fetchone("SELECT state FROM engagement WHERE conversation_id = ?", (conversation_id,))
        return str(row["state"]) if row else None

    async def fire(self, conversation_id: str, trigger: str, *, prompt: str | None = None,
                   stored: str | Literal[False] | None = False) -> str:
        """Run `trigger` for a conversation; returns the new state. Unknown-in-state triggers are ignored.
        `stored`: the state just read (None: no row yet), to save reading it again.

        The transition is a compare-and-set on the stored state (retried on a lost race), so two replicas
        moving one conversation at once cannot both end its topic: exactly one releases what it held."""
        for attempt in range(_CAS_ATTEMPTS):
            current = stored if attempt == 0 and stored is not False else await self._stored(conversation_id)
            if (current or "idle", trigger) in self._inert:
                return current or "idle"  # the common end of a turn: nothing to run, nothing to write
            model = Conversation()
            before, after = await self._run(model, current or "idle", trigger)
            if after == before and trigger != "topic_started":
                return after
            stored_prompt = prompt if after == "in_topic" else None
            if not await self._store(conversation_id, current is not None, before, after, stored_prompt):
                continue  # another turn or replica moved it first: decide again from what it wrote
            if after != before:
                log.debug("conversation %s: %s → %s (%s)", conversation_id, before, after, trigger)
            if model.topic_ended_here:
                await self._on_released(conversation_id, None)
            return after
        raise RuntimeError(f"conversation {conversation_id}: state kept changing under {trigger}")

    async def _store(self, conversation_id: str, existed: bool, before: str, after: str, prompt: str | None) -> bool:
        now = self._clock.now().timestamp()
        if existed:
            return await self._db.execute(
                "UPDATE engagement SET state = ?, pending_prompt = ?, updated_at = ? "
                "WHERE conversation_id = ? AND state = ?",
                (after, prompt, now, conversation_id, before),
            ) > 0
        return await self._db.execute(
            "INSERT INTO engagement (conversation_id, state, pending_prompt, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (conversation_id) DO NOTHING",
            (conversation_id, after, prompt, now),
        ) > 0

    async def fire_member(self, conversation_id: str, user_id: str, trigger: str, *, prompt: str | None = None) -> str:
        """Run `topic_started` / `topic_ended` for one member of a group chat or channel, in one thread
        (`conversation_id` as the activity names it). The member's held items are released when their last
        open topic in the conversation ends. A compare-and-set, like `fire`."""
        key = conversation_key(conversation_id)
        for _ in range(_CAS_ATTEMPTS):
            row = await self._db.fetchone(
                "SELECT state FROM engagement_members WHERE conversation_id = ? AND user_id = ?",
                (conversation_id, user_id),
            )
            if (str(row["state"]) if row else "idle", trigger) in self._inert:
                return str(row["state"]) if row else "idle"
            model = Conversation()
            before, after = await self._run(model, str(row["state"]) if row else "idle", trigger)
            if after == before and trigger != "topic_started":
                return after
            stored_prompt = prompt if after == "in_topic" else None
            now = self._clock.now().timestamp()
            if row is not None:
                won = await self._db.execute(
                    "UPDATE engagement_members SET state = ?, pending_prompt = ?, updated_at = ? "
                    "WHERE conversation_id = ? AND user_id = ? AND state = ?",
                    (after, stored_prompt, now, conversation_id, user_id, before),
                ) > 0
            else:
                won = await self._db.execute(
                    "INSERT INTO engagement_members (conversation_id, user_id, conversation_key, state, "
                    "pending_prompt, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (conversation_id, user_id) DO NOTHING",
                    (conversation_id, user_id, key, after, stored_prompt, now),
                ) > 0
            if not won:
                continue
            if model.topic_ended_here and not await self.member_in_topic(key, user_id, besides=conversation_id):
                await self._on_released(key, user_id)
            return after
        raise RuntimeError(f"member {user_id} of {conversation_id}: state kept changing under {trigger}")

    async def _run(self, model: Conversation, state: str, trigger: str) -> tuple[str, str]:
        """Move `model` from `state` by `trigger` (its callbacks run); returns (before, after)."""
        self._machine.add_model(model, initial=state)
        try:
            await getattr(model, trigger)()
            return state, model.state
        finally:
            self._machine.remove_model(model)

    async def after_turn(self, conversation_id: str, *, mid_topic: bool, prompt: str | None,
                         user_id: str | None = None) -> str:
        """Called at the end of every message turn with whether a dialog is still waiting for the user.

        `user_id` is given in group chats and channels (each member has their own topic there) and not in
        personal chats. A message from a conversation the bot had lost (removed, blocked) shows it is
        reachable again."""
        key = conversation_key(conversation_id)
        stored: str | Literal[False] | None = await self._stored(key)
        if stored == "inactive":
            await self.fire(key, "installed", stored=stored)
            stored = False  # read it again
        trigger = "topic_started" if mid_topic else "topic_ended"
        if user_id is None:
            return await self.fire(key, trigger, prompt=prompt, stored=stored)
        return await self.fire_member(conversation_id, user_id, trigger, prompt=prompt)

    async def member_in_topic(self, conversation_id: str, user_id: str, *, besides: str | None = None) -> bool:
        """Whether a member has an open topic in any thread of a group chat or channel (`besides`: not counting
        that thread)."""
        row = await self._db.fetchone(
            "SELECT 1 AS open FROM engagement_members WHERE conversation_key = ? AND user_id = ? "
            "AND state = 'in_topic' AND conversation_id != ? LIMIT 1",
            (conversation_id, user_id, besides or ""),
        )
        return row is not None

    async def members_in_topic(self, members: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (conversation id, user id) pairs are mid-topic; one query per 500 conversations."""
        wanted = set(members)
        found: set[tuple[str, str]] = set()
        for chunk in chunks(sorted({c for c, _ in wanted})):
            rows = await self._db.fetchall(
                "SELECT DISTINCT conversation_key, user_id FROM engagement_members "
                f"WHERE state = 'in_topic' AND conversation_key IN ({marks(len(chunk))})", chunk
            )
            found.update((r["conversation_key"], r["user_id"]) for r in rows)
        return found & wanted

    async def member_prompt(self, conversation_id: str, user_id: str) -> str | None:
        """The question a member of a group chat or channel left open most recently, if any."""
        row = await self._db.fetchone(
            "SELECT pending_prompt FROM engagement_members WHERE conversation_key = ? AND user_id = ? "
            "AND state = 'in_topic' ORDER BY updated_at DESC LIMIT 1",
            (conversation_id, user_id),
        )
        return str(row["pending_prompt"]) if row and row["pending_prompt"] else None

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

    async def forget_members(self, conversation_id: str) -> None:
        """After a removal, no member's old topic in the conversation holds anything."""
        await self._db.execute("DELETE FROM engagement_members WHERE conversation_key = ?", (conversation_id,))


async def _nothing(conversation_id: str, user_id: str | None) -> None:
    return None
