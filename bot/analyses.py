"""Long-running analyses: acknowledged at once, progress updated in place, the result delivered later.

An analysis is a row plus scheduler jobs (progress steps and the finish), so it survives restarts: after
a crash the jobs run when the process is back, and the analysis resumes where its schedule says.
Other long tasks can be added to `TASKS` the same way.
"""

from __future__ import annotations

import logging
import statistics
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from dialogs.conditions import format_price
from dialogs.ports import UserRef
from scheduler.clock import Clock
from scheduler.jobs import Job
from scheduler.scheduler import Scheduler
from state.db import Database
from state.outbox import OutboxItem
from state.prices import Observation, PriceLog
from state.references import ConversationReferences
from state.watches import product_key

from .proactive import ProactiveMessages

log = logging.getLogger(__name__)

PROGRESS = "analysis.progress"
FINISH = "analysis.finish"
CARD = "application/vnd.microsoft.card.adaptive"
_ANY = {"analysis", "analyses", "all", ""}


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


class AnalysisService:
    """Implements the dialogs' Analyses port."""

    def __init__(self, db: Database, prices: PriceLog, proactive: ProactiveMessages, scheduler: Scheduler,
                 references: ConversationReferences, clock: Clock, *, source: Any = None,
                 analyze_seconds: float = 30.0, progress_delays: Sequence[float] = (5, 15, 30),
                 repeat_every: float = 30.0) -> None:
        self._db = db
        self._prices = prices
        self._proactive = proactive
        self._scheduler = scheduler
        self._references = references
        self._clock = clock
        self._source = source
        self._duration = analyze_seconds
        self._delays = sorted(progress_delays)
        self._repeat = repeat_every
        scheduler.register(PROGRESS, self._progress)
        scheduler.register(FINISH, self._finish)

    async def start(self, user: UserRef, conversation_id: str, product: str) -> str:
        running = await self._db.fetchone(
            "SELECT id FROM analyses WHERE user_id = ? AND product_key = ? AND status = 'running'",
            (user.id, product_key(product)),
        )
        if running is not None:
            return f"I'm already analysing **{product}**; I'll message you when it's done. `status` shows progress."
        analysis_id = uuid.uuid4().hex[:12]
        now = self._clock.now().timestamp()
        record = await self._references.get(conversation_id)
        await self._db.execute(
            "INSERT INTO analyses (id, user_id, conversation_id, tenant_id, product, product_key, status, started_at, "
            "due_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
            (analysis_id, user.id, conversation_id, record.tenant_id if record else None, product.strip(),
             product_key(product), now, now + self._duration, now),
        )
        await self._scheduler.schedule_in(self._duration, FINISH, {"id": analysis_id}, key=f"analysis:{analysis_id}")
        if self._delays and self._delays[0] < self._duration:
            await self._scheduler.schedule_in(self._delays[0], PROGRESS, {"id": analysis_id, "step": 0},
                                              key=f"analysis-progress:{analysis_id}")
        return (f"Working on it — analysing **{product}** takes about {self._duration:g} s. Keep chatting; "
                "I'll message you with the result (`status` shows what's running).")

    async def running(self, user_id: str) -> list[str]:
        rows = await self._db.fetchall(
            "SELECT product, started_at, due_at FROM analyses WHERE user_id = ? AND status = 'running' "
            "ORDER BY started_at", (user_id,))
        now = self._clock.now().timestamp()
        return [f"{r['product']} ({max(0, round(r['due_at'] - now))} s left)" for r in rows]

    async def cancel(self, user_id: str, product: str | None = None) -> int:
        if product is None or product.strip().lower() in _ANY:
            rows = await self._db.fetchall(
                "SELECT id FROM analyses WHERE user_id = ? AND status = 'running' ORDER BY started_at DESC",
                (user_id,))
            rows = rows[:1] if product is not None and product.strip().lower() == "analysis" else rows
        else:
            rows = await self._db.fetchall(
                "SELECT id FROM analyses WHERE user_id = ? AND product_key = ? AND status = 'running'",
                (user_id, product_key(product)))
        for row in rows:
            await self._end(row["id"], "cancelled", "Cancelled.")
        return len(rows)

    async def _row(self, analysis_id: str) -> Any:
        return await self._db.fetchone("SELECT * FROM analyses WHERE id = ?", (analysis_id,))

    async def _progress(self, job: Job) -> None:
        row = await self._row(str(job.payload["id"]))
        if row is None or row["status"] != "running":
            return
        now = self._clock.now().timestamp()
        elapsed, left = now - row["started_at"], max(0.0, row["due_at"] - now)
        text = f"⏳ Still working on **{row['product']}** — {elapsed:.0f} s so far, about {left:.0f} s to go."
        await self._say_progress(row, text)
        step = int(job.payload.get("step", 0)) + 1
        gap = self._delays[step] - self._delays[step - 1] if step < len(self._delays) else self._repeat
        if elapsed + gap < row["due_at"] - row["started_at"]:
            await self._scheduler.schedule_in(gap, PROGRESS, {"id": row["id"], "step": step},
                                              key=f"analysis-progress:{row['id']}")

    async def _say_progress(self, row: Any, text: str) -> None:
        """Post the progress message once, then update that same message in place."""
        payload = {"type": "message", "text": text, "textFormat": "markdown"}
        item = OutboxItem(payload=payload, conversation_id=row["conversation_id"], tenant_id=row["tenant_id"],
                          category="progress")
        if row["progress_row"] is None:
            [admission] = await self._proactive.enqueue([item])
            await self._db.execute("UPDATE analyses SET progress_row = ? WHERE id = ?", (admission.id, row["id"]))
        else:
            item.kind, item.update_of = "update", int(row["progress_row"])
            await self._proactive.enqueue([item])

    async def _finish(self, job: Job) -> None:
        row = await self._row(str(job.payload["id"]))
        if row is None or row["status"] != "running":
            return
        history = await self._prices.history(row["product"])
        if not history and self._source is not None:
            quote = await self._source.fetch(row["product"])
            if quote is not None:
                history = [quote]
        await self._proactive.enqueue([OutboxItem(
            payload=result_payload(summarize(row["product"], history)), conversation_id=row["conversation_id"],
            tenant_id=row["tenant_id"], category="result", dedup_key=f"analysis-result:{row['id']}",
        )])
        await self._end(row["id"], "done", "✅ Done — the result is below.")
        log.info("analysis %s of %s finished (%d observations)", row["id"], row["product"], len(history))

    async def _end(self, analysis_id: str, status: str, progress_text: str) -> None:
        await self._scheduler.cancel(key=f"analysis-progress:{analysis_id}")
        if status != "done":
            await self._scheduler.cancel(key=f"analysis:{analysis_id}")
        await self._db.execute("UPDATE analyses SET status = ?, updated_at = ? WHERE id = ?",
                               (status, self._clock.now().timestamp(), analysis_id))
        row = await self._row(analysis_id)
        if row is not None and row["progress_row"] is not None:
            await self._say_progress(row, f"**{row['product']}**: {progress_text}")
