"""An analysis's result: statistics over the price log, and the card that shows them next to a chart.

The chart is Teams' `Chart.Line` Adaptive Card element. Clients that do not know chart elements (the
`adaptivecards` JavaScript library on its own, older Teams clients) render its `fallback` instead: a
text sparkline of the same prices with the first and last time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from state.model import DEFAULT_TIMEZONE, Observation, format_price, local_time, zone

CARD = "application/vnd.microsoft.card.adaptive"
SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
MAX_POINTS = 48  # enough to show a shape, few enough to keep the card small
_BARS = "▁▂▃▄▅▆▇█"
# Coarse to fine: the first that tells every chart point apart labels the x axis.
_LABELS = ("%d %b", "%H:%M", "%d %b %H:%M", "%H:%M:%S", "%d %b %H:%M:%S")


def summarize(product: str, history: Sequence[Observation]) -> dict[str, Any]:
    """Statistics over the stored observations: min, max, mean, trend (and the points, for the chart)."""
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
        "since": history[0].observed_at, "until": history[-1].observed_at, "source": history[-1].source,
        "points": [(o.observed_at, o.price) for o in history],
    }


def sample(points: Sequence[tuple[datetime, Decimal]], limit: int = MAX_POINTS) -> list[tuple[datetime, Decimal]]:
    """At most `limit` points spread evenly over the history, always keeping the first and the last."""
    if len(points) <= limit:
        return list(points)
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def _labels(moments: Sequence[datetime], timezone: str) -> list[str]:
    local = [m.astimezone(zone(timezone)) for m in moments]
    for fmt in _LABELS:
        labels = [m.strftime(fmt) for m in local]
        if len(set(labels)) == len(labels):
            return labels
    return [str(i + 1) for i in range(len(local))]


def sparkline(prices: Sequence[Decimal]) -> str:
    """`▇▁▅▂`: each price as a bar between the lowest and the highest."""
    low, high = min(prices), max(prices)
    if high == low:
        return _BARS[3] * len(prices)
    return "".join(_BARS[int((p - low) / (high - low) * (len(_BARS) - 1))] for p in prices)


def chart(stats: dict[str, Any], timezone: str) -> dict[str, Any]:
    """A `Chart.Line` of the price history, with a text fallback for clients that do not render charts."""
    points = sample(stats["points"])
    cur = f" ({stats['currency']})" if stats.get("currency") else ""
    low, high = float(stats["min"]), float(stats["max"])
    margin = (high - low) * 0.1 or high * 0.05
    start, end = points[0][0], points[-1][0]
    fallback = {
        "type": "Container",
        "items": [
            {"type": "TextBlock", "text": f"Price history{cur}", "weight": "Bolder", "wrap": True},
            {"type": "TextBlock", "text": sparkline([p for _, p in points]), "fontType": "Monospace",
             "size": "Large", "wrap": True},
            {"type": "TextBlock", "isSubtle": True, "size": "Small", "wrap": True,
             "text": f"{local_time(start, timezone)} → {local_time(end, timezone)}"},
        ],
    }
    return {
        "type": "Chart.Line",
        "title": f"Price history{cur}",
        "xAxisTitle": f"Time ({end.astimezone(zone(timezone)).tzname()})",
        "yAxisTitle": f"Price{cur}",
        "yMin": math.floor(max(0.0, low - margin)),
        "yMax": math.ceil(high + margin),
        "data": [{
            "legend": str(stats["product"]),
            "values": [{"x": label, "y": float(price)}
                       for label, (_, price) in zip(_labels([m for m, _ in points], timezone), points, strict=True)],
        }],
        "fallback": fallback,
    }


def result_payload(stats: dict[str, Any], *, timezone: str = DEFAULT_TIMEZONE) -> dict[str, Any]:
    """The result message: the chart with min/max/mean/trend under it (a chart needs the card's full width to
    be legible), and a button to watch the product."""
    product = stats["product"]
    if not stats["count"]:
        text = (f"Analysis of **{product}** finished, but I have no prices for it yet. "
                f"`watch {product}` to collect some.")
        return {"type": "message", "text": text, "textFormat": "markdown"}
    cur = f" {stats['currency']}" if stats.get("currency") else ""
    facts = [
        {"title": "Observations", "value": f"{stats['count']} since {local_time(stats['since'], timezone)}"},
        {"title": "Latest", "value": f"{format_price(stats['latest'])}{cur}"},
        {"title": "Min / max", "value": f"{format_price(stats['min'])} / {format_price(stats['max'])}{cur}"},
        {"title": "Mean", "value": f"{format_price(stats['mean'])}{cur}"},
        {"title": "Trend", "value": f"{stats['trend']} ({stats['change_pct']:+.1f}% over the period)"},
        {"title": "Source", "value": str(stats["source"])},
    ]
    card = {"type": "AdaptiveCard", "$schema": SCHEMA, "version": "1.5", "body": [
        {"type": "TextBlock", "text": f"Analysis of {product} is ready", "weight": "Bolder", "size": "Medium",
         "wrap": True},
        chart(stats, timezone),
        {"type": "FactSet", "facts": facts, "spacing": "Medium"},
    ], "actions": [{"type": "Action.Submit", "title": f"Watch {product}", "data": {"command": "watch",
                                                                                   "product": product}}]}
    return {"type": "message", "summary": f"Analysis of {product} is ready",
            "attachments": [{"contentType": CARD, "content": card}]}
