"""The domain's shared vocabulary: pure types and key formats every layer agrees on.

Imports nothing from the SDK, aiohttp or the database, so `state/`, `dialogs/`, `scheduler/` users and
`bot/` can all share it: watch conditions, product keys, the conversation a channel thread belongs to,
who a preference is about (`user:`, `conversation:`), the scheduler keys of per-product and
per-conversation jobs (`poll:`, `evaluate:`, `hold:`), and the small records that cross layers (UserRef,
WatchView, WatchResult, Observation).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

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
