"""What the buttons on a price alert do: snooze, stop watching, mute — for the presser's own watch only."""

from __future__ import annotations

from typing import Any

from state.model import user_subject
from state.preferences import Preferences

from .watching import PriceWatcher

SNOOZE_HOURS = {"1h": 1.0, "1d": 24.0}


class AlertActions:
    def __init__(self, watcher: PriceWatcher, preferences: Preferences) -> None:
        self._watcher = watcher
        self._preferences = preferences

    async def outcome(self, user_id: str, value: dict[str, Any]) -> str:
        """Do what the button says; the text to show the user."""
        action = value.get("action")
        try:
            watch_id = int(value.get("watchId", ""))
        except (TypeError, ValueError):
            return "That button is out of date; type `list` to see your watches."
        if action == "snooze" and value.get("args") in SNOOZE_HOURS:
            return await self._watcher.snooze(watch_id, user_id, SNOOZE_HOURS[str(value["args"])])
        if action == "stop":
            return await self._watcher.stop(watch_id, user_id)
        if action == "mute":
            await self._preferences.mute(user_subject(user_id), None)
            return "Notifications muted. Type `unmute` to turn them back on."
        return "I don't know that button; type `help`."
