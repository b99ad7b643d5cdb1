# ruff: noqa: F811  (the fixtures of tests/test_reach.py, imported, are parameters here)
"""Entra group audiences over HTTP: /api/notify `{"to": {"groups": [...], "tenantId"}}` → the expansion job pages
the Graph double's transitiveMembers (by @odata.nextLink, over TLS with the tenant's real token) → each member
reached like a listed user (Bot Connector double create 403 → Graph install → welcome → notice). Nesting, guests
and disabled accounts, three pages, Graph's 429 with Retry-After (the fake clock), hostile ids.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from state.clock import FakeClock
from tests.connector_double import ConnectorDouble
from tests.graph_double import GraphDouble
from tests.test_reach import (  # noqa: F401  (fixtures)
    TENANT,
    Teams,
    batch,
    bot,
    connector,
    deliver,
    graph,
    identity,
    notify,
    person,
    teams,
)

GROUP_A = "a0000000-0000-4000-8000-00000000000a"
GROUP_B = "b0000000-0000-4000-8000-00000000000b"
GROUP_C = "c0000000-0000-4000-8000-00000000000c"


def user(n: int, **fields: Any) -> dict[str, Any]:
    return {"id": person(n), "displayName": f"Person {n}", "userType": "Member", "accountEnabled": True, **fields}


def seed(graph: GraphDouble, groups: dict[str, list[dict[str, Any]]], nested: dict[str, list[str]] | None = None
         ) -> None:
    tenant = graph.add_tenant(TENANT, {u["id"] for members in groups.values() for u in members})
    tenant.groups.update(groups)
    tenant.nested.update(nested or {})


async def reached(bot: BotApplication, connector: ConnectorDouble, fake_clock: FakeClock, text: str, expected: int,
                  *, rounds: int = 30) -> list[str]:
    """Run the scheduler, worker and installer (moving the fake clock a second at a time) until `expected`
    people saw `text`; returns the conversations it went to, one entry per message."""
    for _ in range(rounds):
        await bot.scheduler.run_due()  # the expansion job (its pages, and a run deferred by Retry-After when due)
        await deliver(bot)
        sent = [b for b in connector.sent_activities() if b.get("text") == text]
        if len(sent) >= expected:
            break
        fake_clock.advance(1.1)
    await deliver(bot)
    return [r.conversation_id or "" for r in connector.find("send", status=201) if r.body.get("text") == text]


async def test_nested_groups_reach_each_member_once(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
    teams: Teams, fake_clock: FakeClock,
) -> None:
    seed(graph, {GROUP_A: [user(10), user(11)], GROUP_B: [user(12)], GROUP_C: [user(11), user(13)]},
         nested={GROUP_B: [GROUP_C]})
    status, answer = await notify(http, bot, {"to": {"groups": [GROUP_A, GROUP_B], "tenantId": TENANT},
                                              "text": "Fire drill at 11"})
    assert status == 202 and answer["state"] == "expanding", answer
    seen = await reached(bot, connector, fake_clock, "Fire drill at 11", 4)
    assert len(seen) == len(set(seen)) == 4, seen
    assert sorted(r.path.split("/")[3] for r in graph.requests if r.op == "members") == [GROUP_A, GROUP_B]
    assert {r.query.get("$select") for r in graph.requests if r.op == "members"} == {
        "id,displayName,userType,accountEnabled"}
    status_now = await batch(http, bot, answer["batchId"])
    assert status_now["requested"] == 5 and status_now["targets"] == 4, "person 11 is in A and (through C) in B"
    assert status_now["counts"] == {"sent": 4} and status_now["finished"], "one message each"


async def test_guests_and_disabled_accounts_only_with_include_guests(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
    teams: Teams, fake_clock: FakeClock,
) -> None:
    seed(graph, {GROUP_A: [user(20), user(21, userType="Guest"), user(22, accountEnabled=False)]})
    _, first = await notify(http, bot, {"to": {"groups": [GROUP_A], "tenantId": TENANT}, "text": "Members only"})
    seen = await reached(bot, connector, fake_clock, "Members only", 1)
    assert len(seen) == len(set(seen)) == 1
    status_now = await batch(http, bot, first["batchId"])
    assert (status_now["requested"], status_now["targets"], status_now["counts"]) == (1, 1, {"sent": 1}), status_now
    assert [r.body["members"][0]["id"] for r in connector.find("create")][:1] == [person(20)]
    assert {r.path.split("/")[3] for r in graph.installs()} == {person(20)}, "no guest, no disabled account"
    _, second = await notify(http, bot, {"to": {"groups": [GROUP_A], "tenantId": TENANT, "includeGuests": True},
                                         "text": "Everyone incl. guests"})
    seen = await reached(bot, connector, fake_clock, "Everyone incl. guests", 3)
    assert len(seen) == len(set(seen)) == 3
    status_now = await batch(http, bot, second["batchId"])
    assert (status_now["targets"], status_now["counts"]) == (3, {"sent": 3}), status_now
    assert {r.path.split("/")[3] for r in graph.installs(201)} == {person(20), person(21), person(22)}


async def test_a_group_of_three_pages_is_read_page_by_page(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
    teams: Teams, fake_clock: FakeClock,
) -> None:
    graph.group_page = 3
    seed(graph, {GROUP_A: [user(30 + n) for n in range(8)]})
    _, answer = await notify(http, bot, {"to": {"groups": [GROUP_A], "tenantId": TENANT}, "text": "Paged",
                                         "dedupKey": "p"})
    seen = await reached(bot, connector, fake_clock, "Paged", 8)
    pages = [r for r in graph.requests if r.op == "members"]
    assert len(pages) == 3 and [r.query.get("$skiptoken") for r in pages] == [None, "3", "6"]
    assert len(seen) == len(set(seen)) == 8
    assert (await batch(http, bot, answer["batchId"]))["counts"] == {"sent": 8}


async def test_graph_429_defers_the_expansion_by_retry_after_keeping_its_cursor(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
    teams: Teams, fake_clock: FakeClock,
) -> None:
    graph.group_page = 2
    seed(graph, {GROUP_A: [user(40 + n) for n in range(4)]})
    _, answer = await notify(http, bot, {"to": {"groups": [GROUP_A], "tenantId": TENANT}, "text": "Throttled"})
    graph.throttle_members_at = 2  # the second page, once
    await bot.scheduler.run_due()
    pages = [r for r in graph.requests if r.op == "members"]
    assert [r.status for r in pages] == [200, 429] and pages[1].query.get("$skiptoken") == "2"
    fake_clock.advance(29)
    await bot.scheduler.run_due()
    assert len([r for r in graph.requests if r.op == "members"]) == 2, "not before Retry-After"
    seen = await reached(bot, connector, fake_clock, "Throttled", 4)
    pages = [r for r in graph.requests if r.op == "members"]
    assert [(r.status, r.query.get("$skiptoken")) for r in pages] == [(200, None), (429, "2"), (200, "2")]
    assert len(seen) == len(set(seen)) == 4
    assert (await batch(http, bot, answer["batchId"]))["counts"] == {"sent": 4}


@pytest.mark.parametrize(("to", "field"), [
    ({"groups": [GROUP_A, "not-a-guid"], "tenantId": TENANT}, "to.groups.1"),
    ({"groups": [GROUP_A, "../users/x"], "tenantId": TENANT}, "to.groups.1"),
    ({"groups": [f"{GROUP_A}\n"], "tenantId": TENANT}, "to.groups.0"),
    ({"groups": ["x" * 100_000], "tenantId": TENANT}, "to.groups.0"),
    ({"groups": [], "tenantId": TENANT}, "to.groups"),
    ({"groups": [GROUP_A] * 101, "tenantId": TENANT}, "to.groups"),
    ({"groups": [GROUP_A]}, "to.tenantId"),
    ({"groups": [GROUP_A], "tenantId": "other-tenant"}, "to.tenantId"),
    ({"groups": [GROUP_A], "tenantId": TENANT, "includeGuests": "yes"}, "to.includeGuests"),
    ({"users": [person(1)], "tenantId": TENANT, "includeGuests": True}, "to.includeGuests"),
])
async def test_hostile_group_targets_are_refused_naming_the_field(
    http: aiohttp.ClientSession, bot: BotApplication, graph: GraphDouble, to: dict[str, Any], field: str,
) -> None:
    status, answer = await notify(http, bot, {"to": to, "text": "x"})
    assert status == 400 and answer["error"]["field"] == field, answer
    assert graph.requests == []


async def test_dry_run_of_groups_says_it_does_not_read_graph(
    http: aiohttp.ClientSession, bot: BotApplication, graph: GraphDouble,
) -> None:
    status, answer = await notify(http, bot, {"to": {"groups": [GROUP_A], "tenantId": TENANT}, "text": "x",
                                              "dryRun": True})
    assert status == 200 and answer["requested"] is None and "not expanded" in answer["note"], answer
    assert graph.requests == []

