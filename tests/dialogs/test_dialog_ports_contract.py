"""The contract of the dialog ports, run against every implementation (add the SQLite ones to the params)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from dialogs.memory import InMemoryAnalyses, InMemoryPreferences, InMemoryWatchBook
from dialogs.ports import Analyses, Preferences, WatchBook
from state.clock import FakeClock
from state.model import UNTIL_UNMUTED, Condition, UserRef, WatchView
from state.preferences import Preferences as DatabasePreferences
from state.watches import WatchStore
from tests.conftest import DatabaseOn

ADA = UserRef("29:ada", "aad-ada", "Ada")
BOB = UserRef("29:bob", None, None)
BELOW_10 = Condition("below", Decimal(10))
T0 = datetime(2026, 1, 1, tzinfo=UTC)

ANALYSES: list[Callable[[], Analyses]] = [InMemoryAnalyses]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def book(request: pytest.FixtureRequest, database_on: DatabaseOn, clock: FakeClock) -> WatchBook:
    if request.param == "memory":
        return InMemoryWatchBook()
    return WatchStore(await database_on(request.param), clock)


@pytest.fixture(params=ANALYSES)
def analyses(request: pytest.FixtureRequest) -> Analyses:
    return request.param()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def preferences(request: pytest.FixtureRequest, clock: FakeClock, database_on: DatabaseOn) -> Preferences:
    if request.param == "memory":
        return InMemoryPreferences(clock)
    return DatabasePreferences(await database_on(request.param), clock)


async def test_watch_book_adds_updates_lists_and_removes_per_user(book: WatchBook) -> None:
    first = await book.add(ADA, "c1", "Gadget", BELOW_10)
    assert (first.status, first.watch) == ("created", WatchView("Gadget", BELOW_10))
    await book.add(ADA, "c1", "widget", Condition("any"))
    again = await book.add(ADA, "c1", "GADGET", Condition("percent", Decimal(5)))
    assert again.status == "updated"
    watches = await book.list(ADA.id)
    assert [(w.product.lower(), w.condition) for w in watches] == [
        ("gadget", Condition("percent", Decimal(5))),
        ("widget", Condition("any")),
    ]
    assert await book.list(BOB.id) == []
    assert await book.remove(BOB.id, "gadget") is False
    assert await book.remove(ADA.id, "gAdGeT") is True
    assert await book.remove(ADA.id, "gadget") is False
    assert [w.product for w in await book.list(ADA.id)] == ["widget"]


async def test_analyses_start_once_list_and_cancel(analyses: Analyses) -> None:
    assert await analyses.start(ADA, "c1", "gadget")
    assert await analyses.start(ADA, "c1", "Gadget"), "a repeated start still gets a message"
    await analyses.start(ADA, "c1", "widget")
    await analyses.start(BOB, "c2", "gadget")
    assert [p.lower() for p in await analyses.running(ADA.id)] == ["gadget", "widget"]
    assert await analyses.cancel(ADA.id, "GADGET") == 1
    assert await analyses.cancel(ADA.id, "gadget") == 0
    assert await analyses.running(ADA.id) == ["widget"]
    assert await analyses.cancel(ADA.id) == 1
    assert await analyses.running(ADA.id) == []
    assert await analyses.running(BOB.id) == ["gadget"]


async def test_preferences_mute_expire_replace_and_unmute(preferences: Preferences, clock: FakeClock) -> None:
    ada, group = "user:29:ada", "conversation:c1"
    assert await preferences.muted_until(ada) is None
    assert await preferences.unmute(ada) is False
    await preferences.mute(ada, T0 + timedelta(hours=2))
    assert await preferences.muted_until(ada) == T0 + timedelta(hours=2)
    assert await preferences.muted_until(group) is None
    clock.advance(timedelta(hours=2).total_seconds())
    assert await preferences.muted_until(ada) is None, "a mute ends at its end time"
    assert await preferences.unmute(ada) is False, "an expired mute is not a mute"
    await preferences.mute(ada, T0 + timedelta(hours=5))
    await preferences.mute(ada, None)
    assert await preferences.muted_until(ada) == UNTIL_UNMUTED
    assert await preferences.unmute(ada) is True
    assert await preferences.muted_until(ada) is None
