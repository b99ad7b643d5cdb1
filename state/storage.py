"""botbuilder `Storage` on SQLite: the one class in state/ that knows the SDK.

Items are serialised with jsonpickle (what the SDK's own Cosmos/Blob storages use, so dialog state
objects round-trip). eTags are integer versions; a write compares them and bumps them inside one
`BEGIN IMMEDIATE` transaction, so a stale writer fails instead of silently overwriting.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from botbuilder.core import Storage
from jsonpickle.pickler import Pickler
from jsonpickle.unpickler import Unpickler

from scheduler.clock import Clock, SystemClock

from .db import Database

_MAX_PARAMS = 500


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


class SqliteStorage(Storage):
    """Durable Storage for ConversationState/UserState (and anything else keyed by string)."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        super().__init__()
        self._db = db
        self._clock = clock or SystemClock()

    async def read(self, keys: Iterable[str]) -> dict[str, Any]:
        if keys is None:
            raise Exception("Keys are required when reading")
        wanted = list(dict.fromkeys(keys))
        result: dict[str, Any] = {}
        for start in range(0, len(wanted), _MAX_PARAMS):
            chunk = wanted[start : start + _MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            rows = await self._db.fetchall(
                f"SELECT key, etag, data FROM bot_state WHERE key IN ({marks})", chunk
            )
            for row in rows:
                result[row["key"]] = _with_etag(_decode(row["data"]), str(row["etag"]))
        return result

    async def write(self, changes: dict[str, Any]) -> None:
        if changes is None:
            raise Exception("Changes are required when writing")
        if not changes:
            return
        now = self._clock.now().isoformat()
        encoded = {}
        for key, item in changes.items():
            etag = _etag_of(item)
            if etag == "":
                raise ETagConflictError(f"storage write of {key!r}: empty eTag (use '*' to overwrite)")
            encoded[key] = (etag, _encode(item))
        new_etags: dict[str, int] = {}
        async with self._db.transaction() as tx:
            for key, (etag, data) in encoded.items():
                row = await tx.fetchone("SELECT etag FROM bot_state WHERE key = ?", (key,))
                if row is None:
                    await tx.execute(
                        "INSERT INTO bot_state (key, etag, data, updated_at) VALUES (?, 1, ?, ?)",
                        (key, data, now),
                    )
                    new_etag = 1
                else:
                    stored = int(row["etag"])
                    if etag not in (None, "*") and etag != str(stored):
                        raise ETagConflictError(
                            f"storage write of {key!r}: eTag {etag} is stale (stored {stored})"
                        )
                    new_etag = stored + 1
                    await tx.execute(
                        "UPDATE bot_state SET etag = ?, data = ?, updated_at = ? WHERE key = ?",
                        (new_etag, data, now, key),
                    )
                new_etags[key] = new_etag
        for key, new_etag in new_etags.items():
            _with_etag(changes[key], str(new_etag))

    async def delete(self, keys: Iterable[str]) -> None:
        wanted = list(keys)
        if not wanted:
            return
        async with self._db.transaction() as tx:
            for start in range(0, len(wanted), _MAX_PARAMS):
                chunk = wanted[start : start + _MAX_PARAMS]
                marks = ",".join("?" * len(chunk))
                await tx.execute(f"DELETE FROM bot_state WHERE key IN ({marks})", chunk)
