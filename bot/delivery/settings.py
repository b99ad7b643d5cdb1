"""The dialogs' Preferences port: mutes and settings in `state.preferences`, and the held items re-planned
whenever a time zone, quiet hours or the daily digest change (turning them off releases what they held)."""

from __future__ import annotations

from datetime import datetime

from state.model import NotificationSettings, QuietHours
from state.preferences import Preferences

from .proactive import ProactiveMessages


class NotificationPreferences:
    """What `mute`, `settings`, `timezone`, `quiet` and `digest` change."""

    def __init__(self, preferences: Preferences, proactive: ProactiveMessages) -> None:
        self._preferences = preferences
        self._proactive = proactive

    async def mute(self, subject: str, until: datetime | None) -> None:
        await self._preferences.mute(subject, until)

    async def unmute(self, subject: str) -> bool:
        return await self._preferences.unmute(subject)

    async def muted_until(self, subject: str) -> datetime | None:
        return await self._preferences.muted_until(subject)

    async def settings(self, subject: str) -> NotificationSettings:
        return await self._preferences.settings(subject)

    async def choose_timezone(self, subject: str, timezone: str | None) -> None:
        await self._preferences.choose_timezone(subject, timezone)
        await self._proactive.replan(subject)

    async def set_quiet(self, subject: str, quiet: QuietHours | None, *, timezone: str | None = None) -> None:
        await self._preferences.set_quiet(subject, quiet, timezone=timezone)
        await self._proactive.replan(subject)

    async def set_digest(self, subject: str, at: str | None, *, timezone: str | None = None) -> None:
        await self._preferences.set_digest(subject, at, timezone=timezone)
        await self._proactive.replan(subject)
