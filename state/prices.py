"""Price observations and the watch rows the price evaluator reads and updates."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from state.clock import Clock

from .db import Connection, Database
from .model import Condition, Observation, product_key


@dataclass(frozen=True)
class WatchRow:
    id: int
    user_id: str
    conversation_id: str
    product: str
    condition: Condition
    last_price: Decimal | None
    last_alert_price: Decimal | None
    snoozed_until: float | None
    user_name: str | None = None
    alerts_sent: int = 0

    def alert_key(self) -> str:
        """The dedup key of this watch's next alert: one per alert episode, so a price that comes back after
        another price alerts again (when the condition says so), and an evaluation run twice alerts once."""
        return f"alert:{self.id}:{self.alerts_sent + 1}"


@dataclass(frozen=True)
class Seen:
    """What one evaluation learned about one watch: the price it saw, and whether that alerted."""

    watch_id: int
    price: Decimal
    alerted: bool


def _decimal(value: str | None) -> Decimal | None:
    return Decimal(value) if value else None


class PriceLog:
    """What prices were seen, and the watches on each product."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def record(self, observation: Observation) -> None:
        await self._db.execute(
            "INSERT INTO price_observations (product_key, product, price, currency, source, url, observed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (product_key(observation.product), observation.product, str(observation.price), observation.currency,
             observation.source, observation.url, observation.observed_at.timestamp()),
        )

    async def history(self, product: str, limit: int = 500) -> list[Observation]:
        """Newest last."""
        rows = await self._db.fetchall(
            "SELECT * FROM (SELECT * FROM price_observations WHERE product_key = ? ORDER BY observed_at DESC, id DESC "
            "LIMIT ?) AS recent ORDER BY observed_at, id",
            (product_key(product), limit),
        )
        return [
            Observation(r["product"], Decimal(r["price"]), r["currency"], r["source"], r["url"],
                        datetime.fromtimestamp(r["observed_at"], tz=UTC))
            for r in rows
        ]

    async def latest(self, product: str) -> Observation | None:
        found = await self.history(product, limit=1)
        return found[-1] if found else None

    async def purge(self, before: float, limit: int = 500) -> int:
        """Delete up to `limit` observations from before `before` (retention), keeping each product's newest
        (the baseline an `any change` or `%` watch measures from); returns how many."""
        return await self._db.execute(
            "DELETE FROM price_observations WHERE id IN (SELECT o.id FROM price_observations o "
            "WHERE o.observed_at < ? AND EXISTS (SELECT 1 FROM price_observations n "
            "WHERE n.product_key = o.product_key AND (n.observed_at > o.observed_at "
            "OR (n.observed_at = o.observed_at AND n.id > o.id))) LIMIT ?)",
            (before, limit),
        )

    async def watched_products(self) -> list[str]:
        rows = await self._db.fetchall("SELECT DISTINCT product_key FROM watches ORDER BY product_key")
        return [r["product_key"] for r in rows]

    async def watches_on(self, product: str) -> list[WatchRow]:
        rows = await self._db.fetchall("SELECT * FROM watches WHERE product_key = ? ORDER BY id",
                                       (product_key(product),))
        return [
            WatchRow(r["id"], r["user_id"], r["conversation_id"], r["product"],
                     Condition.from_json(json.loads(r["condition"])), _decimal(r["last_price"]),
                     _decimal(r["last_alert_price"]), r["snoozed_until"], r["user_name"], int(r["alerts_sent"]))
            for r in rows
        ]

    async def watch(self, watch_id: int) -> WatchRow | None:
        row = await self._db.fetchone("SELECT product FROM watches WHERE id = ?", (watch_id,))
        if row is None:
            return None
        return next((w for w in await self.watches_on(row["product"]) if w.id == watch_id), None)

    async def saw(self, watch_id: int, price: Decimal, *, alerted: bool) -> None:
        await self.record_seen([Seen(watch_id, price, alerted)])

    async def record_seen(self, seen: Sequence[Seen], conn: Connection | None = None) -> None:
        """Store each watch's last price (and, where it alerted, the alert and the episode count); on `conn`
        to commit together with the alerts themselves."""
        if not seen:
            return
        now = self._clock.now().timestamp()
        rows = [(str(s.price), int(s.alerted), str(s.price), int(s.alerted), now, s.watch_id) for s in seen]
        sql = ("UPDATE watches SET last_price = ?, last_alert_price = CASE WHEN ? = 1 THEN ? ELSE last_alert_price "
               "END, alerts_sent = alerts_sent + ?, updated_at = ? WHERE id = ?")
        if conn is not None:
            await conn.executemany(sql, rows)
        else:
            await self._db.executemany(sql, rows)

    async def snooze(self, watch_id: int, user_id: str, until: datetime) -> bool:
        """Snooze a watch of `user_id` (someone else's watch is left alone: False)."""
        changed = await self._db.execute(
            "UPDATE watches SET snoozed_until = ?, updated_at = ? WHERE id = ? AND user_id = ?",
            (until.timestamp(), self._clock.now().timestamp(), watch_id, user_id),
        )
        return changed > 0

    async def remove_watch(self, watch_id: int, user_id: str) -> bool:
        """Delete a watch of `user_id` (someone else's watch is left alone: False)."""
        return await self._db.execute("DELETE FROM watches WHERE id = ? AND user_id = ?", (watch_id, user_id)) > 0


def triggers(condition: Condition, *, last_seen: Decimal | None, last_alert: Decimal | None, new: Decimal) -> bool:
    """Whether a new price should alert a watch. Never twice for the same price; the first price seen by
    an `any change` or `%` watch is its baseline."""
    if new in (last_alert, last_seen):
        return False
    if condition.kind == "below":
        return condition.value is not None and new < condition.value
    if condition.kind == "above":
        return condition.value is not None and new > condition.value
    base = last_alert if last_alert is not None else last_seen
    if base is None or base == 0:
        return False
    if condition.kind == "any":
        return True
    assert condition.value is not None
    return abs(new - base) / base * 100 >= condition.value
