"""The price alert: what happened, to what, who/what caused it, what you can do, how to opt out.

In a group chat or channel the alert @mentions the watch's owner, and only they see its buttons: everyone gets
the read-only card, and Universal Actions' user-specific view (`refresh.userIds` = the owner) fetches the
owner's card with buttons (`owner_card`). Everything shown comes from the bot's own rows, markdown-escaped."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from state.model import DEFAULT_TIMEZONE, Condition, UserRef, format_price, local_time

from .cards import SCHEMA
from .mentions import with_mention
from .replies import escape

CARD = "application/vnd.microsoft.card.adaptive"
OWNER_VIEW = "alertOwnerView"  # the refresh verb: the owner's card with buttons
MAX_REFRESH_USERS = 60  # Teams' limit on refresh.userIds


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


def _button(title: str, action: str, watch_id: int, *, execute: bool = False, **extra: str) -> dict[str, Any]:
    """A button; its data names only the watch (what the card shows is never taken back from it)."""
    data = {"command": "alert", "action": action, "watchId": str(watch_id), **extra}
    if execute:  # Universal Actions (group chats and channels): an invoke answered with the card
        return {"type": "Action.Execute", "title": title, "verb": action, "data": data}
    return {"type": "Action.Submit", "title": title, "data": data}


def _buttons(watch_id: int, *, execute: bool = False) -> list[dict[str, Any]]:
    return [
        _button("Snooze 1 hour", "snooze", watch_id, execute=execute, args="1h"),
        _button("Snooze 1 day", "snooze", watch_id, execute=execute, args="1d"),
        _button("Stop watching", "stop", watch_id, execute=execute),
        _button("Mute notifications", "mute", watch_id, execute=execute),
    ]


def _link(url: str | None) -> str | None:
    """A URL safe inside a markdown link (else None: the View button still opens it)."""
    if url is None or any(c in url for c in "()[]<> \\") or not url.isprintable():
        return None
    return url


def alert_text(alert: Alert, *, markdown: bool = False) -> str:
    """`gadget: 12.00 → 9.50 USD (\u221220.8%)` (a real minus sign), or `gadget is now 9.50 USD` when no
    earlier price is known; `markdown`: the names escaped for a card's text."""
    product = escape(alert.product) if markdown else alert.product
    currency = escape(alert.currency) if markdown and alert.currency else alert.currency
    if alert.old is None or alert.old == 0 or alert.old == alert.new:
        return f"{product} is now {_money(alert.new, currency)}"
    change = (alert.new - alert.old) / alert.old * 100
    sign = "+" if change > 0 else "\u2212"  # MINUS SIGN, as typeset
    return (f"{product}: {format_price(alert.old)} → {_money(alert.new, currency)} "
            f"({sign}{abs(change):.1f}%)")


def alert_payload(alert: Alert, owner: UserRef | None = None) -> dict[str, Any]:
    """The activity JSON of one alert (Adaptive Card 1.5). `owner` given (a group chat or channel): @mentioning
    the watch's owner, with the buttons only in the owner's own view (see the module docstring)."""
    product = escape(alert.product)
    link = _link(alert.url)
    who = escape(owner.name) if owner is not None and owner.name else "You"
    text = alert_text(alert, markdown=True)
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": "Price alert", "weight": "Bolder", "size": "Medium", "wrap": True},
        {"type": "TextBlock", "wrap": True, "text": text.replace(product, f"[{product}]({link})", 1) if link else text},
        {"type": "FactSet", "facts": [
            {"title": "Why", "value": f"{who} asked to hear when {product} {escape(alert.condition.describe())}."},
            {"title": "Reported by", "value": escape(alert.source)},
            {"title": "Seen at", "value": local_time(alert.observed_at, alert.timezone)},
        ]},
        {"type": "TextBlock", "isSubtle": True, "wrap": True, "size": "Small", "text": OPT_OUT},
    ]
    actions: list[dict[str, Any]] = []
    if alert.url:
        actions.append({"type": "Action.OpenUrl", "title": "View", "url": alert.url})
    card: dict[str, Any] = {"type": "AdaptiveCard", "$schema": SCHEMA, "version": "1.5", "body": body}
    if owner is None:
        actions += _buttons(alert.watch_id)
    else:
        card["refresh"] = {"action": {"type": "Action.Execute", "verb": OWNER_VIEW, "data": {
            "command": "alert", "action": "view", "watchId": str(alert.watch_id)}}, "userIds": [owner.id]}
    if actions:
        card["actions"] = actions
    payload = {"type": "message", "summary": alert_text(alert), "attachments": [{"contentType": CARD, "content": card}]}
    return payload if owner is None else with_mention(payload, owner, ", your price alert:")


def owner_card(watch_id: int, product: str, condition: Condition, last_price: Decimal | None) -> dict[str, Any]:
    """The watch owner's view of an alert in a group chat or channel (the answer to the card's refresh): the
    watch as stored, and the buttons (Action.Execute)."""
    latest = f"Last price seen: {format_price(last_price)}." if last_price is not None else ""
    card = {
        "type": "AdaptiveCard", "$schema": SCHEMA, "version": "1.5",
        "body": [
            {"type": "TextBlock", "text": "Price alert", "weight": "Bolder", "size": "Medium", "wrap": True},
            {"type": "TextBlock", "wrap": True,
             "text": f"Your watch: {escape(product)} {escape(condition.describe())}. {latest}".strip()},
            {"type": "TextBlock", "isSubtle": True, "wrap": True, "size": "Small", "text": OPT_OUT},
        ],
        "actions": _buttons(watch_id, execute=True),
    }
    return {"contentType": CARD, "content": card}


def acknowledged_payload(alert_summary: str, outcome: str) -> dict[str, Any]:
    """What an alert card becomes after its owner pressed a button (updated in place); `alert_summary` is
    markdown (escape what came from users)."""
    card = {
        "type": "AdaptiveCard", "$schema": SCHEMA, "version": "1.5",
        "body": [
            {"type": "TextBlock", "text": alert_summary or "Price alert", "wrap": True, "isSubtle": True},
            {"type": "TextBlock", "text": outcome, "wrap": True, "weight": "Bolder"},
        ],
    }
    return {"type": "message", "attachments": [{"contentType": CARD, "content": card}]}
