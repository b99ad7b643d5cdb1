"""What the dialogs need from the rest of the bot, as small async Protocols (no SDK types).

The dialogs only collect and validate input; storing watches, running analyses and keeping
preferences belong to other packages, which implement these Protocols (in-memory versions for
tests live in `dialogs.memory`).
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Protocol

from state.model import Condition, NotificationSettings, QuietHours, UserRef, WatchResult, WatchView


class WatchBook(Protocol):
    """The user's price watches. Products are matched case-insensitively."""

    async def add(self, user: UserRef, conversation_id: str, product: str, condition: Condition) -> WatchResult:
        """Create the watch, or replace the condition of an existing watch on the same product."""
        ...

    async def list(self, user_id: str) -> builtins.list[WatchView]:
        """The user's watches, oldest first."""
        ...

    async def remove(self, user_id: str, product: str) -> bool:
        """Stop watching; False when the user was not watching that product."""
        ...


class Analyses(Protocol):
    """Long-running product analyses; results are delivered later, proactively."""

    async def start(self, user: UserRef, conversation_id: str, product: str) -> str | None:
        """Start (or find already running) an analysis; returns the message to show the user, or None when
        the analysis posted its own acknowledgement (which it then updates in place with progress)."""
        ...

    async def running(self, user_id: str) -> builtins.list[str]:
        """Products whose analysis is still running for the user, oldest first."""
        ...

    async def cancel(self, user_id: str, product: str | None = None) -> int:
        """Cancel the analysis of `product` (all of the user's when None); returns how many stopped."""
        ...


class Preferences(Protocol):
    """Notification preferences per subject: `user:<teams user id>` (set by `mute`, `quiet`, `digest` in a 1:1
    chat, and the person's time zone) or `conversation:<conversation id>` (set in a group chat or channel); see
    `user_input.mute_subject`. Changing quiet hours, the digest or the time zone re-plans what is held."""

    async def mute(self, subject: str, until: datetime | None) -> None:
        """Mute until `until` (UTC), or until `unmute` when None. Replaces an earlier mute."""
        ...

    async def unmute(self, subject: str) -> bool:
        """Turn notifications back on; returns whether the subject was muted (an expired mute is not)."""
        ...

    async def muted_until(self, subject: str) -> datetime | None:
        """None when not muted now (never, unmuted or expired); UNTIL_UNMUTED without an end; else the end."""
        ...

    async def settings(self, subject: str) -> NotificationSettings:
        """The subject's time zone (UTC until known), quiet hours, digest time and mute."""
        ...

    async def choose_timezone(self, subject: str, timezone: str | None) -> None:
        """Show times in `timezone` (a valid IANA name), or follow what Teams reports again (None)."""
        ...

    async def set_quiet(self, subject: str, quiet: QuietHours | None, *, timezone: str | None = None) -> None:
        """Quiet hours on, or off (None); `timezone` is stored with a conversation's quiet hours."""
        ...

    async def set_digest(self, subject: str, at: str | None, *, timezone: str | None = None) -> None:
        """A daily digest at local time `at` (`HH:MM`), or off (None)."""
        ...
