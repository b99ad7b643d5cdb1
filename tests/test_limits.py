"""Fair limits over HTTP (issue 20): running analyses per user and per tenant, watches per user; and the same
limits held when turns race on two replicas sharing one PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.app import BotApplication
from state.clock import FakeClock
from state.model import Condition, UserRef
from state.watches import MAX_WATCHES_PER_USER, WatchStore
from tests.chat import Chat
from tests.conftest import StartBot
from tests.connector_double import ConnectorDouble

SETTINGS = {"price_source": "none", "analyze_seconds": 600.0, "progress_delays": (300.0,)}


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


async def running(app: BotApplication, user_id: str) -> list[str]:
    return sorted(r.product for r in await app.analysis_store.running(user_id))


async def test_a_user_runs_at_most_three_analyses_and_is_told_what_to_do(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble,
) -> None:
    app = await start_bot(**SETTINGS)
    ada = Chat(http, app, double)
    for product in ("gadget", "gizmo", "widget"):
        await ada.say(f"analyze {product}")
    await ada.say("analyze sprocket")
    assert "You already have 3 analyses running" in ada.texts()[-1] and "cancel" in ada.texts()[-1]
    assert await running(app, "29:ada") == ["gadget", "gizmo", "widget"]
    await ada.say("cancel gizmo")
    await ada.say("analyze sprocket")
    assert await running(app, "29:ada") == ["gadget", "sprocket", "widget"]


async def test_a_tenant_runs_at_most_its_limit_of_analyses(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble,
) -> None:
    app = await start_bot(max_analyses_per_tenant=2, **SETTINGS)
    people = [Chat(http, app, double, conversation_id=f"dm-{n}", user_id=f"29:u{n}") for n in range(3)]
    other = Chat(http, app, double, conversation_id="dm-other", user_id="29:other",
                 channel_data={"tenant": {"id": "t2"}})
    for person in [*people, other]:
        await person.say("analyze gadget")
    assert "Your organisation has 2 analyses running" in people[2].texts()[-1]
    assert [len(await app.analysis_store.running(p.user_id)) for p in [*people, other]] == [1, 1, 0, 1]


async def test_watches_stop_at_fifty_with_a_reply_that_says_so(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot(**SETTINGS)
    ada = Chat(http, app, double)
    book = WatchStore(app.db, fake_clock)
    for n in range(MAX_WATCHES_PER_USER):
        await book.add(UserRef("29:ada"), "dm-ada", f"p{n}", Condition("any"))
    await ada.say("watch one-more below 10")
    assert "you already watch 50 products" in ada.texts()[-1]
    assert len(await book.list("29:ada")) == MAX_WATCHES_PER_USER


async def replicas(start_bot: StartBot, postgres_url: str) -> tuple[BotApplication, BotApplication]:
    one = await start_bot(database_url=postgres_url, replica_id="replica-1", **SETTINGS)
    two = await start_bot(database_url=postgres_url, replica_id="replica-2", **SETTINGS)
    return one, two


def conversations(http: aiohttp.ClientSession, apps: tuple[BotApplication, BotApplication],
                  double: ConnectorDouble, n: int, user_id: str = "29:ada") -> list[Chat]:
    """One person in `n` group chats, each served by one of the two replicas in turn (so turns race across them)."""
    return [Chat(http, apps[i % 2], double, conversation_id=f"19:group-{i}@thread.v2", user_id=user_id,
                 kind="groupChat") for i in range(n)]


ROUNDS, RACERS = 4, 10


async def test_two_replicas_racing_turns_never_pass_the_analysis_limits_on_postgresql(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, postgres_url: str,
) -> None:
    apps = await replicas(start_bot, postgres_url)
    for round_ in range(ROUNDS):
        user = f"29:ada-{round_}"
        chats = conversations(http, apps, double, RACERS, user)
        await chats[0].say("analyze gadget")
        await chats[1].say("analyze gizmo")
        statuses = await asyncio.gather(*(chat.post(chat.activity("message", text=f"analyze product-{i}"))
                                          for i, chat in enumerate(chats)))
        assert set(statuses) == {200}
        assert len(await apps[0].analysis_store.running(user)) == 3, "exactly one of the racing turns started one"
    same = await asyncio.gather(*(chat.post(chat.activity("message", text="analyze lonely"))
                                  for chat in conversations(http, apps, double, RACERS, "29:bob")))
    assert set(same) == {200} and await running(apps[1], "29:bob") == ["lonely"], "one product runs once"


async def test_two_replicas_racing_turns_never_pass_fifty_watches_on_postgresql(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, postgres_url: str,
    fake_clock: FakeClock,
) -> None:
    apps = await replicas(start_bot, postgres_url)
    book = WatchStore(apps[0].db, fake_clock)
    for round_ in range(ROUNDS):
        user = f"29:ada-{round_}"
        for n in range(MAX_WATCHES_PER_USER - 1):
            await book.add(UserRef(user), "dm-ada", f"p{n}", Condition("any"))
        chats = conversations(http, apps, double, RACERS, user)
        statuses = await asyncio.gather(*(chat.post(chat.activity("message", text=f"watch new-{i} below 10"))
                                          for i, chat in enumerate(chats)))
        assert set(statuses) == {200}
        assert len(await book.list(user)) == MAX_WATCHES_PER_USER, "exactly one of the racing turns added one"
