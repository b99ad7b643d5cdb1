"""The bot as a real process (`python main.py`) for tests that kill it, restart it, or run several at once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


@dataclass
class Bot:
    """A `main.py` process and where it listens."""

    process: asyncio.subprocess.Process
    url: str
    log: Path

    async def kill(self) -> None:
        """SIGKILL (no shutdown, no flush) and reap it."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> int:
        """SIGTERM and wait for a clean exit (its outcomes flushed); SIGKILL after 15 s."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                await self.kill()
        assert self.process.returncode is not None
        return self.process.returncode

    def tail(self, limit: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.log.name}\n{text[-limit:]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


async def start_bot(tmp_path: Path, database_url: str, name: str, token: str, **settings: str) -> Bot:
    """`python main.py` on a free port with `database_url` (and `settings` as environment variables); returns
    once GET /healthz answers 200."""
    for attempt in range(1, 4):  # a free port can be taken before the bot binds it: try another
        port = _free_port()
        env = {
            **os.environ, "HOST": "127.0.0.1", "PORT": str(port), "DATABASE_URL": database_url,
            "NOTIFY_TOKEN": token, "TEAMS_TENANT_RPS": "50", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
            "MicrosoftAppId": "", "MicrosoftAppPassword": "", "MicrosoftAppTenantId": "", **settings,
        }
        log = tmp_path / f"bot-{name}-{attempt}.log"
        with _open_log(log) as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "main.py", cwd=REPO_ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=asyncio.subprocess.STDOUT,
            )
        bot = Bot(process, f"http://127.0.0.1:{port}", log)
        if await _healthy(bot):
            return bot
        await bot.kill()
        if "cannot start" not in bot.tail():
            break
    raise AssertionError(f"the bot did not answer GET /healthz within {START_TIMEOUT} s\n{bot.tail()}")


async def _healthy(bot: Bot) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    delay = 0.05
    async with aiohttp.ClientSession() as http:
        while bot.process.returncode is None and time.monotonic() < deadline:
            try:
                async with http.get(f"{bot.url}/healthz") as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(delay)  # bounded readiness polling, as tests/e2e/conftest.py does
            delay = min(delay * 2, 0.5)
    return False


