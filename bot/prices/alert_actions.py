"""What the buttons on a price alert do: snooze, stop watching, mute — for the presser's own watch only."""

from __future__ import annotations

from typing import Any

from state.model import user_subject
from state.preferences import Preferences

from .watching import PriceWatcher

SNOOZE_HOURS = {"1h": 1.0, "1d": 24.0}
MAX_ROW_ID = 2**63 - 1


def _watch_id(value: Any) -> int | None:
    """A watch id as the card carries it (a number or its ASCII digits) within the database's range; else None."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if type(value) is not int or not 0 < value <= MAX_ROW_ID:
        return None
    return value


class AlertActions:
    def __init__(self, watcher: PriceWatcher, preferences: Preferences) -> None:
        self._watcher = watcher
        self._preferences = preferences

    async def outcome(self, user_id: str, value: dict[str, Any]) -> str:
        """Do what the button says; the text to show the user."""
        action = value.get("action")
        watch_id = _watch_id(value.get("watchId"))
        if watch_id is None:
            return "That button is out of date; type `list` to see your watches."
        if action == "snooze" and value.get("args") in SNOOZE_HOURS:
            return await self._watcher.snooze(watch_id, user_id, SNOOZE_HOURS[str(value["args"])])
        if action == "stop":
            return await self._watcher.stop(watch_id, user_id)
        if action == "mute":
            await self._preferences.mute(user_subject(user_id), None)
            return "Notifications muted. Type `unmute` to turn them back on."
        return "I don't know that button; type `help`."
