"""The `settings` card: time zone, quiet hours, daily digest and mute, with buttons to change them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from state.model import UNTIL_UNMUTED, NotificationSettings, local_time

from .cards import adaptive_card, command_button

SUGGESTED_QUIET = "22:00-07:00"
SUGGESTED_DIGEST = "09:00"


def _zone(settings: NotificationSettings, now: datetime) -> str:
    source = "you chose it" if settings.timezone_chosen else "from Teams"
    if settings.timezone == "UTC" and not settings.timezone_chosen:
        source = "Teams hasn't told me yours yet"
    return f"{settings.timezone} ({local_time(now, settings.timezone, '%H:%M')} now; {source})"


def _mute(settings: NotificationSettings, timezone: str) -> str:
    if settings.muted_until is None:
        return "On"
    if settings.muted_until == UNTIL_UNMUTED:
        return "Muted until you unmute"
    return f"Muted until {local_time(settings.muted_until, timezone)}"


def settings_card(mine: NotificationSettings, applied: NotificationSettings, *, now: datetime,
                  shared: bool) -> dict[str, Any]:
    """`mine`: the person's settings (their time zone); `applied`: the settings notifications here follow —
    the same in a 1:1 chat, the conversation's in a group chat or channel (`shared`)."""
    zone_note = "" if applied.timezone == mine.timezone else f" ({applied.timezone})"
    facts = [
        {"title": "Time zone", "value": _zone(mine, now)},
        {"title": "Quiet hours", "value": f"{applied.quiet.describe()}{zone_note}" if applied.quiet else "Off"},
        {"title": "Daily digest", "value": f"every day at {applied.digest_at}{zone_note}" if applied.digest_at
         else "Off"},
        {"title": "Notifications", "value": _mute(applied, mine.timezone)},
    ]
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": "Your settings", "weight": "Bolder", "size": "Medium", "wrap": True},
        {"type": "FactSet", "facts": facts},
    ]
    if shared:
        body.append({"type": "TextBlock", "wrap": True, "isSubtle": True,
                     "text": "Quiet hours, the digest and mute set here apply to everyone in this conversation."})
    body.append({"type": "TextBlock", "wrap": True, "isSubtle": True, "size": "Small",
                 "text": "Quiet hours hold non-urgent notifications and send them as one message when they end; "
                         "the daily digest sends one message a day. Results you asked for and urgent "
                         "notifications always come at once. Type `timezone Europe/Berlin`, "
                         "`quiet 23:00-06:30` or `digest daily 08:00` to choose other values."})
    actions = [
        command_button("Quiet hours off", "quiet", args="off") if applied.quiet
        else command_button(f"Quiet hours {SUGGESTED_QUIET}", "quiet", args=SUGGESTED_QUIET),
        command_button("Daily digest off", "digest", args="off") if applied.digest_at
        else command_button(f"Daily digest at {SUGGESTED_DIGEST}", "digest", args=f"daily {SUGGESTED_DIGEST}"),
        command_button("Unmute", "unmute") if applied.muted_until is not None else command_button("Mute", "mute"),
    ]
    return adaptive_card(body, actions)
