"""Shared fixtures: a running bot application on a free port with its own database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from bot.app import BotApplication
from bot.config import Config
from scheduler.clock import FakeClock

StartBot = Callable[..., Awaitable[BotApplication]]


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def start_bot(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[StartBot]:
    """Start BotApplication instances on free ports; all are stopped at teardown."""
    started: list[BotApplication] = []

    async def start(config: Config | None = None, **overrides: object) -> BotApplication:
        base = config or Config(database_url=f"sqlite:///{tmp_path}/bot.sqlite3")
        app = BotApplication(replace(base, **overrides), fake_clock)  # type: ignore[arg-type]
        await app.start(host="127.0.0.1", port=0)
        started.append(app)
        return app

    yield start
    for app in reversed(started):
        await app.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bot_url(app: BotApplication, path: str = "/api/messages") -> str:
    return f"http://127.0.0.1:{app.port}{path}"
