"""How long to mute: `30m`, `2h`, `1d`, `90 minutes`, `for 2 hours`. Pure, no SDK."""

from __future__ import annotations

import re
from datetime import timedelta

from .conditions import InputError

MIN_DURATION = timedelta(minutes=1)
MAX_DURATION = timedelta(days=30)
DURATION_HINT = "try `mute 30m`, `mute 2h` or `mute 1d`, or just `mute` until you `unmute`"

_MINUTES_PER_UNIT = {
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 1),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 60),
    **dict.fromkeys(("d", "day", "days"), 24 * 60),
}
_DURATION = re.compile(r"(?:for\s+)?(?P<amount>\d{1,9})\s*(?P<unit>[a-z]+)")


class DurationError(InputError):
    """A mute duration that cannot be used; the message says what to type instead."""


def parse_duration(text: str) -> timedelta:
    """`2h` → 2 hours. Whole minutes, hours or days from 1 minute to 30 days; DurationError otherwise."""
    norm = " ".join(text.strip().lower().split()).rstrip(".!")
    match = _DURATION.fullmatch(norm)
    if not match or match.group("unit") not in _MINUTES_PER_UNIT:
        raise DurationError(f"I can't read `{text.strip()}` as a duration; {DURATION_HINT}.")
    duration = timedelta(minutes=int(match.group("amount")) * _MINUTES_PER_UNIT[match.group("unit")])
    if not MIN_DURATION <= duration <= MAX_DURATION:
        raise DurationError(f"I can mute for 1 minute up to 30 days, and `{text.strip()}` isn't; {DURATION_HINT}.")
    return duration


def describe_duration(duration: timedelta) -> str:
    """`2 hours`, `1 day 3 hours`, `90 minutes` → `1 hour 30 minutes`."""
    minutes = int(duration.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{n} {unit}{'' if n == 1 else 's'}" for n, unit in ((days, "day"), (hours, "hour"), (minutes, "minute"))
             if n]
    return " ".join(parts) or "less than a minute"
