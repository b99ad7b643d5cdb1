"""An analysis's result: statistics over the price log, and the message that shows them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from state.model import Observation, format_price

CARD = "application/vnd.microsoft.card.adaptive"


def summarize(product: str, history: Sequence[Observation]) -> dict[str, Any]:
    """Statistics over the stored observations: min, max, mean, trend."""
    prices = [o.price for o in history]
    if not prices:
        return {"product": product, "count": 0}
    first, last = prices[0], prices[-1]
    change = (last - first) / first * 100 if first else Decimal(0)
    trend = "rising" if change > 1 else "falling" if change < -1 else "flat"
    return {
        "product": product, "count": len(prices), "min": min(prices), "max": max(prices),
        "mean": Decimal(str(round(statistics.fmean(float(p) for p in prices), 2))), "latest": last,
        "change_pct": change, "trend": trend, "currency": history[-1].currency,
        "since": history[0].observed_at, "source": history[-1].source,
    }


def result_payload(stats: dict[str, Any]) -> dict[str, Any]:
    product = stats["product"]
    if not stats["count"]:
        text = (f"Analysis of **{product}** finished, but I have no prices for it yet. "
                f"`watch {product}` to collect some.")
        return {"type": "message", "text": text, "textFormat": "markdown"}
    cur = f" {stats['currency']}" if stats.get("currency") else ""
    facts = [
        {"title": "Observations", "value": f"{stats['count']} since {stats['since'].strftime('%Y-%m-%d %H:%M UTC')}"},
        {"title": "Latest", "value": f"{format_price(stats['latest'])}{cur}"},
        {"title": "Min / max", "value": f"{format_price(stats['min'])} / {format_price(stats['max'])}{cur}"},
        {"title": "Mean", "value": f"{format_price(stats['mean'])}{cur}"},
        {"title": "Trend", "value": f"{stats['trend']} ({stats['change_pct']:+.1f}% over the period)"},
        {"title": "Source", "value": str(stats["source"])},
    ]
    card = {"type": "AdaptiveCard", "version": "1.5", "body": [
        {"type": "TextBlock", "text": f"Analysis of {product} is ready", "weight": "Bolder", "wrap": True},
        {"type": "FactSet", "facts": facts},
    ], "actions": [{"type": "Action.Submit", "title": f"Watch {product}", "data": {"command": "watch",
                                                                                   "product": product}}]}
    return {"type": "message", "summary": f"Analysis of {product} is ready",
            "attachments": [{"contentType": CARD, "content": card}]}
