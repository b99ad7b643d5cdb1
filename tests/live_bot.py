"""A running bot for synchronous clients (schemathesis, hypothesis): the application and a connector double
served from a background thread with its own event loop, real clock, own database."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from bot.app import BotApplication
from bot.config import Config
from tests.connector_double import ConnectorDouble

T = TypeVar("T")


class LiveBot:
    """`with LiveBot(tmp) as live:` serves the bot at `live.url` and the double at `live.double.url`."""

    def __init__(self, directory: Path, **config: Any) -> None:
        self._config = Config(database_url=f"sqlite:///{directory}/live.sqlite3", **config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-bot", daemon=True)
        self.double = ConnectorDouble(max_records=5000)
        self.app: BotApplication | None = None
        self.url = ""

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run a coroutine on the bot's loop and wait for its result."""
        async def wrapped() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(timeout)

    def __enter__(self) -> LiveBot:
        self._thread.start()

        async def start() -> None:
            await self.double.start()
            self.app = BotApplication(self._config)
            await self.app.start(host="127.0.0.1", port=0)

        self.run(start)
        assert self.app is not None
        self.url = f"http://127.0.0.1:{self.app.port}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        async def stop() -> None:
            if self.app is not None:
                await self.app.stop()
            await self.double.stop()

        try:
            self.run(stop)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
