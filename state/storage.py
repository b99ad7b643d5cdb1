"""botbuilder `Storage` on the bot's database: the one class in state/ that knows the SDK.

Items are serialised with jsonpickle (what the SDK's own Cosmos/Blob storages use, so dialog state
objects round-trip). eTags are integer versions. A write with an eTag is a conditional
`UPDATE … WHERE etag = ?` (or an insert that must not collide), so of two writers racing with the same
eTag exactly one wins and the other gets ETagConflictError -- on either engine, whichever process.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from botbuilder.core import Storage
from jsonpickle.pickler import Pickler
from jsonpickle.unpickler import Unpickler

from state.clock import Clock, SystemClock

from .db import Connection, Database, chunks, marks


class ETagConflictError(Exception):
    """A write carried an eTag that no longer matches the stored item."""


def _etag_of(item: Any) -> str | None:
    value = item.get("e_tag") if isinstance(item, dict) else getattr(item, "e_tag", None)
    return None if value is None else str(value)


def _with_etag(item: Any, etag: str) -> Any:
    if isinstance(item, dict):
        item["e_tag"] = etag
    elif hasattr(item, "__dict__"):
        item.e_tag = etag
    return item


def _encode(item: Any) -> str:
    data = Pickler(keys=True).flatten(item)
    if isinstance(data, dict):
        data.pop("e_tag", None)
    return json.dumps(data, separators=(",", ":"))


def _decode(text: str) -> Any:
    return Unpickler(keys=True).restore(json.loads(text))


class DatabaseStorage(Storage):
    """Durable Storage for ConversationState/UserState (and anything else keyed by string)."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        super().__init__()
        self._db = db
        self._clock = clock or SystemClock()

    async def read(self, keys: Iterable[str]) -> dict[str, Any]:
        if keys is None:
            raise Exception("Keys are required when reading")
        result: dict[str, Any] = {}
        for chunk in chunks(list(dict.fromkeys(keys))):
            rows = await self._db.fetchall(
                f"SELECT key, etag, data FROM bot_state WHERE key IN ({marks(len(chunk))})", chunk
            )
            for row in rows:
                result[row["key"]] = _with_etag(_decode(row["data"]), str(row["etag"]))
        return result

    async def write(self, changes: dict[str, Any]) -> None:
        if changes is None:
            raise Exception("Changes are required when writing")
        if not changes:
            return
        now = self._clock.now().timestamp()
        encoded = {}
        for key, item in changes.items():
            etag = _etag_of(item)
            if etag == "":
                raise ETagConflictError(f"storage write of {key!r}: empty eTag (use '*' to overwrite)")
            encoded[key] = (etag, _encode(item))
        if len(encoded) == 1:  # the usual case (one BotState per call): one statement, no transaction
            [(key, (etag, data))] = encoded.items()
            _with_etag(changes[key], str(await self._write_one(self._db, key, etag, data, now)))
            return
        new_etags: dict[str, int] = {}
        async with self._db.transaction() as tx:
            for key, (etag, data) in encoded.items():
                new_etags[key] = await self._write_one(tx, key, etag, data, now)
        for key, new_etag in new_etags.items():
            _with_etag(changes[key], str(new_etag))

    @staticmethod
    async def _write_one(conn: Connection, key: str, etag: str | None, data: str, now: float) -> int:
        """Write one item; its new eTag. Each statement is atomic on its own, so no transaction is needed."""
        if etag is None or etag == "*":  # last writer wins
            row = await conn.fetchone(
                "INSERT INTO bot_state (key, etag, data, updated_at) VALUES (?, 1, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET etag = bot_state.etag + 1, data = excluded.data, "
                "updated_at = excluded.updated_at RETURNING etag",
                (key, data, now),
            )
        else:
            row = await conn.fetchone(
                "UPDATE bot_state SET etag = etag + 1, data = ?, updated_at = ? WHERE key = ? AND etag = ? "
                "RETURNING etag",
                (data, now, key, _int_etag(etag)),
            )
            if row is None:  # stale eTag, or an item that is not stored (yet)
                row = await conn.fetchone(
                    "INSERT INTO bot_state (key, etag, data, updated_at) VALUES (?, 1, ?, ?) "
                    "ON CONFLICT (key) DO NOTHING RETURNING etag",
                    (key, data, now),
                )
            if row is None:
                raise ETagConflictError(f"storage write of {key!r}: eTag {etag} is stale")
        if row is None:
            raise RuntimeError(f"storage write of {key!r} returned no eTag")
        return int(row["etag"])

    async def delete(self, keys: Iterable[str]) -> None:
        wanted = list(keys)
        if not wanted:
            return
        async with self._db.transaction() as tx:
            for chunk in chunks(wanted):
                await tx.execute(f"DELETE FROM bot_state WHERE key IN ({marks(len(chunk))})", chunk)


def _int_etag(etag: str) -> int:
    """Stored eTags are integers; anything else can never match (-1 is never stored)."""
    try:
        return int(etag)
    except ValueError:
        return -1
