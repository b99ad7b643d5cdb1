"""DatabaseStorage against the SDK's own Storage contract suite, plus eTag compare-and-swap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botbuilder.core import ConversationState, MessageFactory, TurnContext
from botbuilder.core.adapters import TestAdapter
from botbuilder.testing import StorageBaseTests

from state.db import Database
from state.storage import DatabaseStorage, ETagConflictError
from tests.conftest import OpenDatabase


@pytest.fixture
def storage(db: Database) -> DatabaseStorage:
    return DatabaseStorage(db)


CONTRACT = [
    "return_empty_object_when_reading_unknown_key",
    "handle_null_keys_when_reading",
    "handle_null_keys_when_writing",
    "does_not_raise_when_writing_no_items",
    "create_object",
    "handle_crazy_keys",
    "update_object",
    "delete_object",
    "delete_unknown_object",
    "perform_batch_operations",
    "proceeds_through_waterfall",
]


@pytest.mark.parametrize("case", CONTRACT)
async def test_sdk_storage_contract(storage: DatabaseStorage, case: str) -> None:
    assert await getattr(StorageBaseTests, case)(storage) is True


async def test_stale_etag_is_refused_and_nothing_is_written(storage: DatabaseStorage) -> None:
    await storage.write({"a": {"n": 1, "e_tag": "*"}, "b": {"n": 1}})
    first = await storage.read(["a", "b"])
    second = await storage.read(["a"])
    first["a"]["n"] = 2
    first["b"]["n"] = 2
    await storage.write(first)
    second["a"]["n"] = 3
    second["b"] = {"n": 3}
    with pytest.raises(ETagConflictError):
        await storage.write(second)
    after = await storage.read(["a", "b"])
    assert (after["a"]["n"], after["b"]["n"]) == (2, 2), "a failed batch must leave every item unchanged"


async def test_concurrent_writers_with_the_same_etag_one_wins(storage: DatabaseStorage) -> None:
    await storage.write({"k": {"n": 0, "e_tag": "*"}})
    copies = [await storage.read(["k"]) for _ in range(10)]
    for i, copy in enumerate(copies):
        copy["k"]["n"] = i + 1
    results = await asyncio.gather(*(storage.write(c) for c in copies), return_exceptions=True)
    winners = [r for r in results if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, ETagConflictError) for r in results if r is not None)


async def test_write_refreshes_the_callers_etag(storage: DatabaseStorage) -> None:
    item = {"n": 1, "e_tag": "*"}
    await storage.write({"x": item})
    item["n"] = 2
    await storage.write({"x": item})  # the etag set by the first write is current
    assert (await storage.read(["x"]))["x"]["n"] == 2


async def test_conversation_state_survives_reopening(open_database: OpenDatabase) -> None:
    for expected in (1, 2):
        db = await open_database()
        state = ConversationState(DatabaseStorage(db))
        counter = state.create_property("counter")
        seen: list[int] = []

        async def turn(context: TurnContext, state: ConversationState = state, counter: Any = counter,
                       seen: list[int] = seen) -> None:
            value = await counter.get(context, lambda: 0)
            await counter.set(context, value + 1)
            seen.append(value + 1)
            await state.save_changes(context)

        await TestAdapter().process_activity(MessageFactory.text("hi"), turn)
        await db.close()
        assert seen == [expected]


async def test_writers_in_two_processes_racing_one_etag_one_wins(open_database: OpenDatabase) -> None:
    """Two connections (pools, on PostgreSQL) stand for two replicas; each round exactly one write wins."""
    first, second = DatabaseStorage(await open_database()), DatabaseStorage(await open_database())
    await first.write({"k": {"n": 0, "e_tag": "*"}})
    for round_ in range(25):
        a, b = await first.read(["k"]), await second.read(["k"])
        assert a["k"]["e_tag"] == b["k"]["e_tag"]
        a["k"]["n"], b["k"]["n"] = f"a{round_}", f"b{round_}"
        results = await asyncio.gather(first.write(a), second.write(b), return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["ETagConflictError", "NoneType"], results
        winner = a if results[0] is None else b
        assert (await first.read(["k"]))["k"]["n"] == winner["k"]["n"]
