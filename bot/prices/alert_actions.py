"""What the buttons on a price alert do: snooze, stop watching, mute — for the watch's owner only.

Anyone else's press does nothing to the watch or the card; they get an answer meant for them. What the answer
names (the product) comes from the watch row, never from the button's value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dialogs.replies import escape
from state.model import user_subject
from state.preferences import Preferences
from state.prices import WatchRow

from .watching import PriceWatcher

SNOOZE_HOURS = {"1h": 1.0, "1d": 24.0}
MAX_ROW_ID = 2**63 - 1
OUT_OF_DATE = "That button is out of date; type `list` to see your watches."


def _watch_id(value: Any) -> int | None:
    """A watch id as the card carries it (a number or its ASCII digits) within the database's range; else None."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if type(value) is not int or not 0 < value <= MAX_ROW_ID:
        return None
    return value


@dataclass(frozen=True)
class Pressed:
    """The outcome of a press: the text for the presser (markdown), and the watch when the presser owns it (only
    then may the card change)."""

    text: str
    watch: WatchRow | None = None

    @property
    def by_owner(self) -> bool:
        return self.watch is not None

    @property
    def summary(self) -> str:
        """`Price alert for <product>` from the watch row, escaped."""
        return f"Price alert for {escape(self.watch.product)}" if self.watch is not None else "Price alert"


class AlertActions:
    def __init__(self, watcher: PriceWatcher, preferences: Preferences) -> None:
        self._watcher = watcher
        self._preferences = preferences

    async def owned(self, user_id: str, value: dict[str, Any]) -> WatchRow | None:
        """The watch the button is about, when `user_id` owns it; else None."""
        watch_id = _watch_id(value.get("watchId"))
        watch = await self._watcher.watch(watch_id) if watch_id is not None else None
        return watch if watch is not None and watch.user_id == user_id else None

    async def press(self, user_id: str, value: dict[str, Any]) -> Pressed:
        """Do what the button says, if `user_id` owns the watch."""
        action = value.get("action")
        watch_id = _watch_id(value.get("watchId"))
        if watch_id is None:
            return Pressed(OUT_OF_DATE)
        watch = await self._watcher.watch(watch_id)
        if watch is None:
            return Pressed("That watch no longer exists; type `list` to see your watches.")
        if watch.user_id != user_id:
            return Pressed(f"This alert belongs to someone else's watch; only they can use its buttons. To get "
                           f"alerts of your own, type `watch {escape(watch.product)}`.")
        if action == "snooze" and value.get("args") in SNOOZE_HOURS:
            return Pressed(await self._watcher.snooze(watch_id, user_id, SNOOZE_HOURS[str(value["args"])]), watch)
        if action == "stop":
            return Pressed(await self._watcher.stop(watch_id, user_id), watch)
        if action == "mute":
            await self._preferences.mute(user_subject(user_id), None)
            return Pressed("Notifications muted. Type `unmute` to turn them back on.", watch)
        return Pressed("I don't know that button; type `help`.")
