"""The domain's shared vocabulary: pure types and key formats every layer agrees on.

Imports nothing from the SDK, aiohttp or the database, so `state/`, `dialogs/`, `scheduler/` users and
`bot/` can all share it: watch conditions, product keys, the conversation a channel thread belongs to,
who a preference is about (`user:`, `conversation:`), the scheduler keys of per-product and
per-conversation jobs (`poll:`, `evaluate:`, `hold:`, `deferred:`), the small records that cross layers
(UserRef, WatchView, WatchResult, Observation), and local time: each user's IANA time zone, quiet hours and
the daily digest (`NotificationSettings`), computed with `zoneinfo` so daylight saving changes are handled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from functools import cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

ConditionKind = Literal["below", "above", "any", "percent"]
UNTIL_UNMUTED = datetime.max.replace(tzinfo=UTC)
"""What `Preferences.muted_until` returns for a mute without an end."""


@dataclass(frozen=True)
class Condition:
    """When to alert: price below/above `value`, any change, or a move of at least `value` percent."""

    kind: ConditionKind
    value: Decimal | None = None

    def __post_init__(self) -> None:
        if self.kind == "any":
            if self.value is not None:
                raise ValueError("an 'any' condition has no value")
        elif self.kind in ("below", "above", "percent"):
            if not isinstance(self.value, Decimal) or not self.value.is_finite() or self.value <= 0:
                raise ValueError(f"a {self.kind!r} condition needs a positive Decimal value")
        else:
            raise ValueError(f"unknown condition kind {self.kind!r}")

    def describe(self) -> str:
        """Human wording that completes "tell you when it …": `drops below 10.00`."""
        if self.kind == "below":
            return f"drops below {format_price(self._value)}"
        if self.kind == "above":
            return f"rises above {format_price(self._value)}"
        if self.kind == "percent":
            return f"moves by {format_percent(self._value)} or more (up or down)"
        return "changes"

    @property
    def _value(self) -> Decimal:
        assert self.value is not None  # guaranteed by __post_init__ for every kind but "any"
        return self.value

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (the value as a string, so no precision is lost)."""
        return {"kind": self.kind, "value": None if self.value is None else str(self.value)}

    @classmethod
    def from_json(cls, data: Any) -> Condition:
        """The inverse of `to_json`; ValueError for anything it did not produce."""
        if not isinstance(data, dict) or data.get("kind") not in ("below", "above", "any", "percent"):
            raise ValueError(f"not a condition: {data!r}")
        raw = data.get("value")
        if raw is not None and not isinstance(raw, str):
            raise ValueError(f"condition value must be a string, got {raw!r}")
        try:
            value = None if raw is None else Decimal(raw)
        except ArithmeticError as exc:
            raise ValueError(f"bad condition value {raw!r}") from exc
        return cls(data["kind"], value)


def format_price(value: Decimal) -> str:
    """`10` → `10.00`, `1299.5` → `1,299.50`, `0.125` → `0.125` (never rounds a typed digit away)."""
    exponent = value.as_tuple().exponent
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    return f"{value:,.{places}f}"


def format_percent(value: Decimal) -> str:
    """`5` → `5%`, `2.50` → `2.5%`."""
    text = f"{value.normalize():f}"
    return f"{text}%"


# ---- keys ------------------------------------------------------------------------------------------------


def product_key(product: str) -> str:
    """Products match case-insensitively and ignore surrounding/duplicate spaces."""
    return " ".join(product.split()).casefold()


THREAD_MARK = ";messageid="
"""What Teams appends to a channel's id to name one thread (`19:…@thread.tacv2;messageid=<root id>`)."""
GROUP_SCOPES = ("groupChat", "channel")
"""Conversation types with several people in them (Teams' `conversationType`; `personal` is a 1:1 chat)."""


def conversation_key(conversation_id: str) -> str:
    """The conversation a message belongs to: for a channel thread, the channel (its id without
    `;messageid=…`); any other id as is. Records, mutes, welcomes, engagement, rate limits and
    proactive posts all address this key; only turn replies go to the thread itself."""
    return conversation_id.partition(THREAD_MARK)[0]


def user_subject(user_id: str) -> str:
    """The preference subject of one person (what `mute` in a 1:1 chat sets)."""
    return f"user:{user_id}"


def conversation_subject(conversation_id: str) -> str:
    """The preference subject of a whole group chat or channel."""
    return f"conversation:{conversation_id}"


def poll_key(product: str) -> str:
    """The scheduler key of a product's one poll job."""
    return f"poll:{product_key(product)}"


def evaluate_key(product: str) -> str:
    """The scheduler key of a product's pending (coalescing) evaluation."""
    return f"evaluate:{product_key(product)}"


def hold_key(conversation_id: str, user_id: str | None = None) -> str:
    """The scheduler key of the job that releases a conversation's held items after HOLD_MAX_SECONDS
    (in a group chat or channel: those held for one member)."""
    return f"hold:{conversation_id}" if user_id is None else f"hold:{conversation_id}|{user_id}"


def deferred_key(conversation_id: str) -> str:
    """The scheduler key of the job that sends what quiet hours or the daily digest held in a conversation."""
    return f"deferred:{conversation_id}"


# ---- records that cross layers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRef:
    """Who asked: the Teams user id (`29:…`, the key everywhere), plus AAD object id and display name."""

    id: str
    aad_object_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class WatchView:
    """One watch as the user sees it."""

    product: str
    condition: Condition
    last_price: Decimal | None = None


@dataclass(frozen=True)
class WatchResult:
    """Outcome of `WatchBook.add`: a new watch, a changed condition, or a refusal with a reason to show."""

    status: Literal["created", "updated", "rejected"]
    watch: WatchView
    reason: str | None = None


@dataclass(frozen=True)
class Observation:
    """One price quote: polled from a source or pushed to `POST /api/prices`."""

    product: str
    price: Decimal
    currency: str | None
    source: str
    url: str | None
    observed_at: datetime


# ---- local time --------------------------------------------------------------------------------------------

DEFAULT_TIMEZONE = "UTC"
QUIET_HOURS = "quiet hours"
DAILY_DIGEST = "daily digest"
_CLOCK = re.compile(r"^(?P<hour>\d{1,2})(?:(?:[:.h])(?P<minute>\d{2}))?h?$")
_RANGE = re.compile(r"^(?P<start>[\d:.h]+)\s*(?:-|–|—|to|until)\s*(?P<end>[\d:.h]+)$")


@cache
def _zone_names() -> dict[str, str]:
    """Every IANA zone name this system knows, by its case-folded spelling."""
    return {name.casefold(): name for name in available_timezones()}


def timezone_name(name: object) -> str | None:
    """The canonical IANA name for `name` (`europe/berlin` → `Europe/Berlin`), or None when it is not a zone.

    Invalid names are ignored, not errors: callers keep what they had."""
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        return None
    text = name.strip()
    try:
        ZoneInfo(text)
        return text
    except (ZoneInfoNotFoundError, ValueError):
        return _zone_names().get(text.casefold())


def zone(name: str | None) -> tzinfo:
    """The zone called `name`; UTC when it is unknown or not given."""
    known = timezone_name(name)
    return ZoneInfo(known) if known else UTC


def local_time(moment: datetime, zone_name: str | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A moment as the user reads it, with the zone's short name: `2026-11-30 06:42 CET`."""
    local = moment.astimezone(zone(zone_name))
    return f"{local.strftime(fmt)} {local.tzname()}"


def parse_clock(text: str) -> str | None:
    """`7` / `7:00` / `07.30` / `22h` → `07:00` / `07:30` / `22:00`; None when it is not a time of day."""
    match = _CLOCK.fullmatch(text.strip().lower())
    if not match:
        return None
    hour, minute = int(match.group("hour")), int(match.group("minute") or 0)
    return f"{hour:02d}:{minute:02d}" if hour < 24 and minute < 60 else None


@dataclass(frozen=True)
class QuietHours:
    """A daily window (local wall-clock times `HH:MM`) in which non-urgent notifications wait; may span midnight."""

    start: str
    end: str

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        """`22:00-07:00`, `22-7`, `22:00 to 07:00`; None when it is not such a range (or it is empty)."""
        match = _RANGE.fullmatch(" ".join(text.lower().split()))
        if not match:
            return None
        start, end = parse_clock(match.group("start")), parse_clock(match.group("end"))
        return cls(start, end) if start and end and start != end else None

    def describe(self) -> str:
        return f"{self.start}–{self.end}"


@dataclass(frozen=True)
class NotificationSettings:
    """What one preference subject chose: its time zone (UTC until known), quiet hours, digest time, mute."""

    timezone: str = DEFAULT_TIMEZONE
    timezone_chosen: bool = False
    """True when set with the `timezone` command: Teams' `localTimezone` then no longer changes it."""
    quiet: QuietHours | None = None
    digest_at: str | None = None
    muted_until: datetime | None = None


def _hm(clock: str) -> tuple[int, int]:
    hour, minute = clock.split(":")
    return int(hour), int(minute)


def next_local(now: datetime, clock: str, zone_name: str | None) -> datetime:
    """The first moment after `now` (UTC) at which the wall clock in the zone shows `clock` (`HH:MM`).

    Daylight saving: a time skipped by the spring change happens at the same offset as before it (02:30
    becomes 03:30 summer time); a time repeated in autumn happens the first time."""
    tz = zone(zone_name)
    hour, minute = _hm(clock)
    today: date = now.astimezone(tz).date()
    for days in range(3):
        day = today + timedelta(days=days)
        candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).astimezone(UTC)
        if candidate > now:
            return candidate
    raise AssertionError("unreachable: a wall-clock time comes within two days")


def in_quiet_hours(moment: datetime, quiet: QuietHours, zone_name: str | None) -> bool:
    """Whether the wall clock in the zone is inside the window at `moment` (start included, end excluded)."""
    local = moment.astimezone(zone(zone_name)).strftime("%H:%M")
    if quiet.start < quiet.end:
        return quiet.start <= local < quiet.end
    return local >= quiet.start or local < quiet.end


def release_time(now: datetime, settings: NotificationSettings) -> tuple[datetime, str] | None:
    """When a non-urgent notification arriving at `now` may go out, and why; None means now.

    With a daily digest: at the next digest time (or, if that falls in quiet hours, when they end). Otherwise,
    inside quiet hours: when they end."""
    if settings.digest_at:
        at = next_local(now, settings.digest_at, settings.timezone)
        if settings.quiet and in_quiet_hours(at, settings.quiet, settings.timezone):
            at = next_local(at, settings.quiet.end, settings.timezone)
        return at, DAILY_DIGEST
    if settings.quiet and in_quiet_hours(now, settings.quiet, settings.timezone):
        return next_local(now, settings.quiet.end, settings.timezone), QUIET_HOURS
    return None
