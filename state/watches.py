"""Price watches, persisted: who watches which product, under which condition, and the price last seen."""

from __future__ import annotations

import json
from decimal import Decimal

from state.clock import Clock

from .db import Database
from .model import Condition, UserRef, WatchResult, WatchView, product_key
from .quotas import lock, user_lock

MAX_WATCHES_PER_USER = 50


class WatchStore:
    """The `WatchBook` port of the dialogs: each user's watches."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def add(self, user: UserRef, conversation_id: str, product: str, condition: Condition) -> WatchResult:
        key = product_key(product)
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            await lock(tx, user_lock(user.id), now)  # two turns at once (two replicas) cannot both add the 50th
            existing = await tx.fetchone(
                "SELECT id, last_price FROM watches WHERE user_id = ? AND product_key = ?", (user.id, key)
            )
            if existing is None:
                count = await tx.fetchone("SELECT COUNT(*) AS n FROM watches WHERE user_id = ?", (user.id,))
                if count is not None and count["n"] >= MAX_WATCHES_PER_USER:
                    return WatchResult("rejected", WatchView(product, condition),
                                       f"you already watch {MAX_WATCHES_PER_USER} products; `unwatch` one first")
                inserted = await tx.fetchone(
                    "INSERT INTO watches (user_id, user_aad_id, user_name, conversation_id, product, product_key, "
                    "condition, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (user_id, product_key) DO NOTHING RETURNING id",
                    (user.id, user.aad_object_id, user.name, conversation_id, product.strip(), key,
                     json.dumps(condition.to_json()), now, now),
                )
                if inserted is not None:
                    return WatchResult("created", WatchView(product.strip(), condition))
                existing = await tx.fetchone(  # another turn of this user created it a moment ago
                    "SELECT id, last_price FROM watches WHERE user_id = ? AND product_key = ?", (user.id, key)
                )
                assert existing is not None
            await tx.execute(
                "UPDATE watches SET condition = ?, conversation_id = ?, user_name = COALESCE(?, user_name), "
                "updated_at = ? WHERE id = ?",
                (json.dumps(condition.to_json()), conversation_id, user.name, now, existing["id"]),
            )
            last = Decimal(existing["last_price"]) if existing["last_price"] else None
            return WatchResult("updated", WatchView(product.strip(), condition, last))

    async def list(self, user_id: str) -> list[WatchView]:
        rows = await self._db.fetchall(
            "SELECT product, condition, last_price FROM watches WHERE user_id = ? ORDER BY created_at, id", (user_id,)
        )
        return [
            WatchView(r["product"], Condition.from_json(json.loads(r["condition"])),
                      Decimal(r["last_price"]) if r["last_price"] else None)
            for r in rows
        ]

    async def remove(self, user_id: str, product: str) -> bool:
        changed = await self._db.execute(
            "DELETE FROM watches WHERE user_id = ? AND product_key = ?", (user_id, product_key(product))
        )
        return changed > 0
