"""The price alert: what happened, to what, who/what caused it, what you can do, how to opt out.

In a group chat or channel the alert @mentions the watch's owner (only they can use its buttons)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from state.model import DEFAULT_TIMEZONE, Condition, UserRef, format_price, local_time

from .cards import SCHEMA
from .mentions import with_mention

CARD = "application/vnd.microsoft.card.adaptive"


@dataclass(frozen=True)
class Alert:
    watch_id: int
    product: str
    old: Decimal | None
    new: Decimal
    currency: str | None
    source: str
    url: str | None
    condition: Condition
    observed_at: datetime
    timezone: str = DEFAULT_TIMEZONE
    """The watch owner's time zone: "Seen at" is shown in it."""


OPT_OUT = ("Don't want these? Snooze this watch, stop watching it, or mute notifications. Or get them later: "
           "`quiet 22:00-07:00` holds them overnight, `digest daily 09:00` sends one message a day; "
           "`settings` shows yours.")


def _money(value: Decimal, currency: str | None) -> str:
    return f"{format_price(value)} {currency}" if currency else format_price(value)


def _button(title: str, action: str, alert: Alert, **extra: str) -> dict[str, Any]:
    data = {"command": "alert", "action": action, "watchId": str(alert.watch_id), "product": alert.product, **extra}
    return {"type": "Action.Submit", "title": title, "data": data}


def alert_text(alert: Alert) -> str:
    """`gadget: 12.00 → 9.50 USD (\u221220.8%)` (a real minus sign), or `gadget is now 9.50 USD` when no
    earlier price is known."""
    if alert.old is None or alert.old == 0 or alert.old == alert.new:
        return f"{alert.product} is now {_money(alert.new, alert.currency)}"
    change = (alert.new - alert.old) / alert.old * 100
    sign = "+" if change > 0 else "\u2212"  # MINUS SIGN, as typeset
    return (f"{alert.product}: {format_price(alert.old)} → {_money(alert.new, alert.currency)} "
            f"({sign}{abs(change):.1f}%)")


def alert_payload(alert: Alert, owner: UserRef | None = None) -> dict[str, Any]:
    """The activity JSON of one alert (Adaptive Card 1.5); `owner` given: @mentioning the watch's owner."""
    product = f"[{alert.product}]({alert.url})" if alert.url else alert.product
    who = owner.name if owner is not None and owner.name else "You"
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": "Price alert", "weight": "Bolder", "size": "Medium", "wrap": True},
        {"type": "TextBlock", "wrap": True, "text": alert_text(alert).replace(alert.product, product, 1)},
        {"type": "FactSet", "facts": [
            {"title": "Why", "value": f"{who} asked to hear when {alert.product} {alert.condition.describe()}."},
            {"title": "Reported by", "value": alert.source},
            {"title": "Seen at", "value": local_time(alert.observed_at, alert.timezone)},
        ]},
        {"type": "TextBlock", "isSubtle": True, "wrap": True, "size": "Small", "text": OPT_OUT},
    ]
    actions: list[dict[str, Any]] = []
    if alert.url:
        actions.append({"type": "Action.OpenUrl", "title": "View", "url": alert.url})
    actions += [
        _button("Snooze 1 hour", "snooze", alert, args="1h"),
        _button("Snooze 1 day", "snooze", alert, args="1d"),
        _button("Stop watching", "stop", alert),
        _button("Mute notifications", "mute", alert),
    ]
    card = {"type": "AdaptiveCard", "$schema": SCHEMA, "version": "1.5", "body": body, "actions": actions}
    payload = {"type": "message", "summary": alert_text(alert), "attachments": [{"contentType": CARD, "content": card}]}
    return payload if owner is None else with_mention(payload, owner, ", your price alert:")


def acknowledged_payload(alert_summary: str, outcome: str) -> dict[str, Any]:
    """What an alert card becomes after a button press (updated in place)."""
    card = {
        "type": "AdaptiveCard", "$schema": SCHEMA, "version": "1.5",
        "body": [
            {"type": "TextBlock", "text": alert_summary or "Price alert", "wrap": True, "isSubtle": True},
            {"type": "TextBlock", "text": outcome, "wrap": True, "weight": "Bolder"},
        ],
    }
    return {"type": "message", "attachments": [{"contentType": CARD, "content": card}]}
