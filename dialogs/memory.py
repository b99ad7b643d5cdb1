"""In-memory implementations of the dialog ports, for tests and local runs."""

from __future__ import annotations

import builtins
from dataclasses import replace
from datetime import datetime

from state.clock import Clock
from state.model import UNTIL_UNMUTED, Condition, NotificationSettings, QuietHours, UserRef, WatchResult, WatchView


def _key(product: str) -> str:
    return " ".join(product.split()).casefold()


class InMemoryWatchBook:
    """Watches per user, keyed by case-folded product name; refuses more than `max_watches`."""

    def __init__(self, max_watches: int = 20) -> None:
        self.max_watches = max_watches
        self.watches: dict[str, dict[str, WatchView]] = {}
        self.conversations: dict[str, str] = {}  # user id → conversation of the latest add
        self.users: dict[str, UserRef] = {}  # user id → who added, as last seen

    async def add(self, user: UserRef, conversation_id: str, product: str, condition: Condition) -> WatchResult:
        mine = self.watches.setdefault(user.id, {})
        view = WatchView(product, condition)
        existing = _key(product) in mine
        if not existing and len(mine) >= self.max_watches:
            return WatchResult("rejected", view, f"you are already watching {self.max_watches} products")
        mine[_key(product)] = view
        self.conversations[user.id] = conversation_id
        self.users[user.id] = user
        return WatchResult("updated" if existing else "created", view)

    async def list(self, user_id: str) -> builtins.list[WatchView]:
        return builtins.list(self.watches.get(user_id, {}).values())

    async def remove(self, user_id: str, product: str) -> bool:
        return self.watches.get(user_id, {}).pop(_key(product), None) is not None


class InMemoryAnalyses:
    """Analyses that run until a test calls `finish`."""

    def __init__(self) -> None:
        self.started: builtins.list[tuple[UserRef, str, str]] = []
        self._running: dict[str, builtins.list[str]] = {}

    async def start(self, user: UserRef, conversation_id: str, product: str) -> str | None:
        mine = self._running.setdefault(user.id, [])
        if _key(product) in map(_key, mine):
            return f"I'm already analysing **{product}**; I'll message you when it's done."
        mine.append(product)
        self.started.append((user, conversation_id, product))
        return f"Started analysing **{product}**. I'll message you when it's done; `status` shows progress."

    async def running(self, user_id: str) -> builtins.list[str]:
        return builtins.list(self._running.get(user_id, []))

    async def cancel(self, user_id: str, product: str | None = None) -> int:
        mine = self._running.get(user_id, [])
        keep = [] if product is None else [p for p in mine if _key(p) != _key(product)]
        self._running[user_id] = keep
        return len(mine) - len(keep)

    def finish(self, user_id: str, product: str) -> None:
        self._running[user_id] = [p for p in self._running.get(user_id, []) if _key(p) != _key(product)]


class InMemoryPreferences:
    """Mutes and settings per subject; expiry is judged on the injected clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.mutes: dict[str, datetime | None] = {}
        self.chosen: dict[str, NotificationSettings] = {}

    async def mute(self, subject: str, until: datetime | None) -> None:
        self.mutes[subject] = until

    async def unmute(self, subject: str) -> bool:
        was_muted = await self.muted_until(subject) is not None
        self.mutes.pop(subject, None)
        return was_muted

    async def muted_until(self, subject: str) -> datetime | None:
        if subject not in self.mutes:
            return None
        until = self.mutes[subject]
        if until is None:
            return UNTIL_UNMUTED
        return until if until > self._clock.now() else None

    async def settings(self, subject: str) -> NotificationSettings:
        return replace(self.chosen.get(subject, NotificationSettings()), muted_until=await self.muted_until(subject))

    async def choose_timezone(self, subject: str, timezone: str | None) -> None:
        current = self.chosen.get(subject, NotificationSettings())
        self.chosen[subject] = replace(current, timezone=timezone or current.timezone,
                                       timezone_chosen=timezone is not None)

    async def set_quiet(self, subject: str, quiet: QuietHours | None, *, timezone: str | None = None) -> None:
        current = self.chosen.get(subject, NotificationSettings())
        self.chosen[subject] = replace(current, quiet=quiet, timezone=timezone or current.timezone)

    async def set_digest(self, subject: str, at: str | None, *, timezone: str | None = None) -> None:
        current = self.chosen.get(subject, NotificationSettings())
        self.chosen[subject] = replace(current, digest_at=at, timezone=timezone or current.timezone)
