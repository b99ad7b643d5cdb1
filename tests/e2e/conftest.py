"""End-to-end fixtures: the bot as a real subprocess (`python main.py`) and the real Agents Playground.

Without node/npm the e2e tests skip, unless REQUIRE_PLAYGROUND=1 (CI), where they fail instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from pathlib import Path

import pytest
from playground import NodeTools, Playground, PlaygroundUnavailable, find_node_tools, loopback_env, tail

REPO_ROOT = Path(__file__).resolve().parents[2]
BOT_START_TIMEOUT = 30.0
BOT_STOP_TIMEOUT = 15.0
_FAILED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives the real Agents Playground against the bot subprocess")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether a test failed, so fixtures can print their logs at teardown."""
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return bool(request.node.stash.get(_FAILED, False))


@pytest.fixture(scope="session")
def playground_tools() -> NodeTools:
    """node + the Playground CLI (running `npm ci` in tests/node if needed); skips or fails without them."""
    try:
        return find_node_tools()
    except PlaygroundUnavailable as exc:
        reason = f"Agents Playground unavailable: {exc}"
    print(reason, file=sys.stderr)
    if os.environ.get("REQUIRE_PLAYGROUND") == "1":
        pytest.fail(f"{reason}\n(REQUIRE_PLAYGROUND=1, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


class BotProcess(str):
    """The running bot's base URL (a str, e.g. "http://127.0.0.1:PORT"), with its files attached."""

    port: int
    database: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def messages_url(self) -> str:
        return f"{self}/api/messages"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _start_bot(tmp_path: Path, attempt: int, extra_env: Mapping[str, str] | None = None) -> BotProcess:
    port = _free_port()
    database = tmp_path / "bot.sqlite3"
    log_path = tmp_path / f"bot-{attempt}.log"
    env = loopback_env()
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        DATABASE_URL=f"sqlite:///{database}",
        LOG_LEVEL="DEBUG",
        MicrosoftAppId="",
        MicrosoftAppPassword="",  # overrides a developer's .env, which load_config also reads
        MicrosoftAppTenantId="",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "main.py"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    bot = BotProcess(f"http://127.0.0.1:{port}")
    bot.port, bot.database, bot.log_path, bot.process = port, database, log_path, process
    return bot


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture
def bot_env() -> dict[str, str]:
    """Extra environment for the bot subprocess, applied last (none by default).

    Override this fixture in a test module (or parametrize it) to set e.g. NOTIFY_TOKEN."""
    return {}


@pytest.fixture
def bot_process(tmp_path: Path, request: pytest.FixtureRequest, bot_env: dict[str, str]) -> Iterator[BotProcess]:
    """`python main.py` on a free port with its own SQLite file; SIGTERM must stop it with exit code 0."""
    bot: BotProcess | None = None
    for attempt in range(1, 4):  # a free port can be taken between choosing and binding it: try another
        bot = _start_bot(tmp_path, attempt, bot_env)
        deadline = time.monotonic() + BOT_START_TIMEOUT
        delay = 0.05
        while bot.process.poll() is None and not _healthy(bot) and time.monotonic() < deadline:
            time.sleep(delay)  # bounded polling of /healthz
            delay = min(delay * 2, 0.5)
        if bot.process.poll() is None and _healthy(bot):
            break
        code = bot.process.poll()
        _stop(bot.process)
        if code == 1 and "cannot start" in tail(bot.log_path) and attempt < 3:
            continue
        pytest.fail(
            f"the bot did not answer GET /healthz within {BOT_START_TIMEOUT} s (exit code {code})\n"
            f"--- {bot.log_path}\n{tail(bot.log_path)}",
            pytrace=False,
        )
    assert bot is not None
    try:
        yield bot
    finally:
        bot.process.send_signal(signal.SIGTERM)
        try:
            code = bot.process.wait(BOT_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _stop(bot.process)
            code = None
        if code != 0 or _failed(request):
            print(f"--- bot log {bot.log_path} (tail)\n{tail(bot.log_path, 20000)}")
        assert code == 0, (
            f"the bot did not exit cleanly on SIGTERM within {BOT_STOP_TIMEOUT} s (exit {code}); log above"
        )


@pytest.fixture
async def playground(
    playground_tools: NodeTools, bot_process: BotProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Playground]:
    """A started Playground pointed at `bot_process`, listening on both WebSockets."""
    pg = Playground(playground_tools, tmp_path / "playground", diagnostic_files=[bot_process.log_path])
    await pg.start(bot_process.messages_url)
    try:
        yield pg
    finally:
        await pg.stop()
        if _failed(request):
            print(pg.diagnostics())
