"""Conversation references: upsert refreshes, by-user lookups, inactive marking and reactivation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from state.clock import FakeClock
from state.db import Database, connect
from state.references import ConversationRecord, ConversationReferences
from tests.conftest import OpenDatabase


@pytest.fixture
def refs(db: Database) -> ConversationReferences:
    return ConversationReferences(db, FakeClock())


def record(conversation_id: str = "c1", **kw: object) -> ConversationRecord:
    values: dict[str, object] = {
        "conversation_id": conversation_id,
        "channel_id": "msteams",
        "service_url": "https://smba.example/amer/",
        "reference": {"conversation": {"id": conversation_id}},
        "tenant_id": "t1",
        "conversation_type": "personal",
        "user_id": "29:u1",
        "user_aad_id": "aad-1",
        "user_name": "Ada",
    }
    values.update(kw)
    return ConversationRecord(**values)  # type: ignore[arg-type]


async def test_upsert_refreshes_service_url_and_keeps_known_fields(refs: ConversationReferences) -> None:
    await refs.upsert(record(), reactivate=True)
    await refs.upsert(record(service_url="https://smba.example/emea/", tenant_id=None, user_aad_id=None),
                      reactivate=True)
    got = await refs.get("c1")
    assert got is not None
    assert got.service_url == "https://smba.example/emea/"
    assert got.tenant_id == "t1", "a later activity without a tenant must not erase it"
    assert got.user_aad_id == "aad-1"


async def test_a_channel_keeps_its_team_and_names_once_seen(db: Database) -> None:
    refs, channel = ConversationReferences(db, FakeClock()), "19:deals@thread.tacv2"
    await refs.upsert(record(channel, conversation_type="channel", team_id="19:team", team_name="Pricing",
                             channel_name="Deals"), reactivate=True)
    await refs.upsert(record(channel, conversation_type="channel", team_id="19:team", user_id="29:u2",
                             user_name="Bob"), reactivate=True)  # a later activity without the names
    got = await ConversationReferences(db, FakeClock()).get(channel)  # a fresh reader: no cache
    assert got is not None and (got.team_id, got.team_name, got.channel_name, got.user_id) == (
        "19:team", "Pricing", "Deals", "29:u2")
    assert await refs.member_name(channel, "29:u1") == "Ada"
    assert await refs.member_name(channel, "29:u2") == "Bob"
    assert await refs.member_name(channel, "29:nobody") is None


async def test_lookup_by_teams_id_or_aad_id_personal_first(refs: ConversationReferences) -> None:
    await refs.upsert(record("group", conversation_type="groupChat"), reactivate=True)
    await refs.upsert(record("dm"), reactivate=True)
    await refs.upsert(record("other", user_id="29:u2", user_aad_id="aad-2"), reactivate=True)
    assert [r.conversation_id for r in await refs.for_user("29:u1")] == ["dm", "group"]
    assert [r.conversation_id for r in await refs.for_user("aad-1")] == ["dm", "group"]
    assert await refs.for_user("nobody") == []


async def test_inactive_until_a_reactivating_activity(refs: ConversationReferences) -> None:
    await refs.upsert(record(), reactivate=True)
    assert await refs.mark_inactive("c1", "uninstalled") is True
    assert await refs.mark_inactive("c1", "uninstalled") is False
    await refs.upsert(record(), reactivate=False)
    got = await refs.get("c1")
    assert got is not None and not got.active and got.inactive_reason == "uninstalled"
    assert await refs.for_user("29:u1") == []
    assert [r.conversation_id for r in await refs.all(active_only=False)] == ["c1"]
    await refs.upsert(record(), reactivate=True)
    got = await refs.get("c1")
    assert got is not None and got.active and got.inactive_reason is None


async def test_all_filters_by_tenant(refs: ConversationReferences) -> None:
    await refs.upsert(record("a", tenant_id="t1"), reactivate=True)
    await refs.upsert(record("b", tenant_id="t2"), reactivate=True)
    assert [r.conversation_id for r in await refs.all(tenant_id="t2")] == ["b"]


async def test_reachable_lists_active_conversations_with_their_tenants(refs: ConversationReferences) -> None:
    await refs.upsert(record("a", tenant_id="t1"), reactivate=True)
    await refs.upsert(record("b", tenant_id=None), reactivate=True)
    await refs.upsert(record("c", tenant_id="t2"), reactivate=True)
    await refs.mark_inactive("a", "uninstalled")
    assert sorted(await refs.reachable(), key=lambda t: t[0]) == [("b", None), ("c", "t2")]


async def test_upsert_many_writes_each_record_as_upsert_would(refs: ConversationReferences) -> None:
    await refs.upsert(record("a", service_url="https://old/"), reactivate=True)
    await refs.mark_inactive("a", "uninstalled")
    await refs.upsert_many([record("a", service_url="https://new/", user_name=None),
                            record("b", tenant_id="t2", user_id="29:u2")], reactivate=True)
    a, b = await refs.get("a", fresh=True), await refs.get("b", fresh=True)
    assert a is not None and a.service_url == "https://new/" and a.active and a.user_name == "Ada"
    assert b is not None and b.tenant_id == "t2"
    assert [r.conversation_id for r in await refs.for_user("29:u2")] == ["b"]


async def test_migrations_are_versioned_and_idempotent(open_database: OpenDatabase) -> None:
    for _ in range(2):
        db = await open_database()
        rows = await db.fetchall("SELECT version FROM schema_version ORDER BY version")
        await db.close()
    versions = [r["version"] for r in rows]
    assert versions == sorted(set(versions)) and versions[0] == 1


async def test_newer_schema_than_the_build_is_refused(open_database: OpenDatabase) -> None:
    db = await open_database()
    await db.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    await db.close()
    with pytest.raises(RuntimeError, match="newer than this build"):
        await open_database()


async def test_identical_refresh_within_a_minute_is_not_written_again(db: Database) -> None:
    clock = FakeClock()
    refs = ConversationReferences(db, clock)
    await refs.upsert(record(), reactivate=True)
    first = (await refs.get("c1")).last_seen  # type: ignore[union-attr]
    clock.advance(30)
    await refs.upsert(record(), reactivate=True)
    assert (await refs.get("c1")).last_seen == first  # type: ignore[union-attr]
    await refs.upsert(record(service_url="https://smba.example/emea/"), reactivate=True)
    assert (await refs.get("c1")).service_url == "https://smba.example/emea/"  # type: ignore[union-attr]
    await refs.mark_inactive("c1", "blocked")
    await refs.upsert(record(service_url="https://smba.example/emea/"), reactivate=True)
    assert (await refs.get("c1")).active, "a reactivating activity after a block is always written"  # type: ignore[union-attr]
    clock.advance(61)
    await refs.upsert(record(service_url="https://smba.example/emea/"), reactivate=True)
    assert (await refs.get("c1")).last_seen != first  # type: ignore[union-attr]


async def test_a_read_that_overlapped_a_write_is_not_cached(db: Database) -> None:
    """Regression (issue 12): a record read before a reactivation committed was put back into the cache."""
    clock = FakeClock()
    refs = ConversationReferences(db, clock)
    await refs.upsert(record(), reactivate=True)
    await refs.mark_inactive("c1", "blocked")
    real_fetchone, reads = db.fetchone, []

    async def fetchone_then_a_write_lands(sql: str, params: Any = ()) -> Any:
        row = await real_fetchone(sql, params)
        reads.append(sql)
        if len(reads) == 1:  # the reactivation commits while this read is on its way back
            await ConversationReferences(db, clock).upsert(record(), reactivate=True)
        return row

    db.fetchone = fetchone_then_a_write_lands  # type: ignore[method-assign]
    stale = await refs.get("c1")
    assert stale is not None and not stale.active  # what the read saw
    assert (await refs.get("c1")).active, "the stale record was not cached: the next read sees the write"  # type: ignore[union-attr]
    assert len(reads) == 2


async def test_a_write_in_another_process_invalidates_this_ones_cache(postgres_url: str) -> None:
    """On PostgreSQL the replicas tell each other (LISTEN/NOTIFY): a block seen by one is seen by all at once."""
    first, second = connect(postgres_url), connect(postgres_url)
    heard = asyncio.Event()
    first.subscribe("bot_cache", lambda payload: heard.set())
    await first.open()
    await second.open()
    try:
        clock = FakeClock()
        here, there = ConversationReferences(first, clock), ConversationReferences(second, clock)
        await here.upsert(record(), reactivate=True)
        assert (await here.get("c1")).active  # type: ignore[union-attr]  # now cached here for a minute
        heard.clear()
        await there.mark_inactive("c1", "blocked")
        await asyncio.wait_for(heard.wait(), 10)
        assert not (await here.get("c1")).active, "the cached record was dropped"  # type: ignore[union-attr]
    finally:
        await first.close()
        await second.close()
