"""`make playground` on a fresh clone, as a newcomer types it: one command, a URL, a chat, Ctrl-C, exit 0.

The clone is a copy of the files git would clone (tracked plus new, unignored ones: the working tree as it will
be committed). `make playground` runs for real in it: it creates `.venv` (runtime dependencies only, from pip's
cache when warm), runs `npm ci` in tests/node, starts the bot and the Playground. It runs on a pseudo-terminal
whose Ctrl-C (the byte 0x03) sends SIGINT to the terminal's foreground process group, as a person's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playground import NodeTools, Playground, loopback_env

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 300.0  # a cold pip cache downloads the runtime dependencies
STOP_TIMEOUT = 60.0
URL = re.compile(r"open (http://localhost:(\d+)) and type help")
BOT_PID = re.compile(r"bot starting \(pid (\d+)\)")
PLAYGROUND_PID = re.compile(r"Playground \(pid (\d+)\)")
COMMANDS = ("watch", "list", "unwatch", "analyze", "status", "mute", "unmute")


def clone_files(target: Path) -> None:
    """What `git clone` of this working tree would give (tracked and new unignored files, as they are now)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=False,
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked archive): everything but what git ignores
        shutil.copytree(REPO_ROOT, target, ignore=shutil.ignore_patterns(
            ".git", ".venv", "node_modules", "data", "__pycache__", "*.egg-info", ".*_cache", "build", ".env"))
        return
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def session_members(sid: int) -> list[int]:
    """Every process of the session `sid` (Linux /proc): what must be gone, or killed after a failure."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
                found.append(int(stat.parent.name))
    return found


class Terminal:
    """A pseudo-terminal running one command as its session's controlling terminal; collects its output."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        self._master = master
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=lambda: _make_controlling(0),
        )
        os.close(slave)
        self._output = bytearray()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every process holding the terminal is gone
                chunk = b""
            with self._changed:
                self._output += chunk
                self._changed.notify_all()
            if not chunk:
                return

    @property
    def text(self) -> str:
        with self._changed:
            return self._output.decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while (found := pattern.search(self._output.decode(errors="replace"))) is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no {pattern.pattern!r} within {timeout:.0f} s "
                                         f"(exit {self.process.poll()}); the terminal showed:\n{self.text[-8000:]}")
                self._changed.wait(min(left, 1.0))  # woken by output; the bound only re-checks the exit
        return found

    def press_ctrl_c(self) -> None:
        os.write(self._master, termios.tcgetattr(self._master)[6][termios.VINTR])

    def close(self) -> None:
        for pid in session_members(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._reader.join(10)
        os.close(self._master)


def _make_controlling(fd: int) -> None:
    import fcntl

    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    target = tmp_path / "clone"
    target.mkdir()
    clone_files(target)
    return target


@pytest.fixture
def terminal_env(playground_tools: NodeTools) -> dict[str, str]:
    """A person's shell: no outer make or virtualenv; the bot on a free port, the Playground on any."""
    env = {k: v for k, v in loopback_env().items()
           if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "VIRTUAL_ENV", "PYTHONPATH", "DATABASE_URL", "HOST")
           and not k.startswith(("Microsoft", "PYTEST"))}
    env.update(PORT=str(free_port()), PLAYGROUND_PORT="0", TEAMSAPPTESTER_BROWSER="none", TERM="dumb")
    env["PATH"] = os.pathsep.join([str(Path(playground_tools.node).parent), env.get("PATH", "")])
    return env


@pytest.fixture
def make_playground(clone: Path, terminal_env: dict[str, str]) -> Iterator[Terminal]:
    if shutil.which("make") is None:
        pytest.fail("make is not installed", pytrace=False)
    terminal = Terminal(["make", "playground"], clone, terminal_env)
    try:
        yield terminal
    finally:
        terminal.close()


async def test_make_playground_chats_and_stops_cleanly_on_ctrl_c(
    make_playground: Terminal, clone: Path, terminal_env: dict[str, str]
) -> None:
    url = make_playground.wait_for(URL, START_TIMEOUT)
    bot_pid = int(make_playground.wait_for(BOT_PID, 1).group(1))
    playground_pid = int(make_playground.wait_for(PLAYGROUND_PID, 1).group(1))
    bot_port, playground_port = int(terminal_env["PORT"]), int(url.group(2))
    assert alive(bot_pid) and alive(playground_pid)
    assert (clone / ".venv" / "bin" / "python").is_file() and (clone / "tests/node/node_modules").is_dir()

    async with Playground(None, clone / "data" / "driver") as chat:
        await chat.attach(playground_port)
        sent = await chat.send_text("help")
        reply = await chat.wait_for_message(after=sent, timeout=30)
        delivery = await chat.wait_for_delivery("message", after=sent)
    assert delivery.ok, f"the bot answered the message with {delivery}"
    missing = [c for c in COMMANDS if not re.search(rf"\b{c}\b", reply.text)]
    assert not missing, f"help does not mention {missing}: {reply.text!r}"

    make_playground.press_ctrl_c()
    try:
        code = make_playground.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"make playground still runs {STOP_TIMEOUT:.0f} s after Ctrl-C:\n{make_playground.text[-6000:]}")
    output = make_playground.text
    assert code == 0, f"make playground exited {code} on Ctrl-C:\n{output[-6000:]}"
    assert not alive(bot_pid), "the bot is still running"
    assert not alive(playground_pid), "the Playground is still running"
    assert session_members(make_playground.process.pid) == [], "something started by make playground still runs"
    assert not listening(bot_port) and not listening(playground_port)
    assert "bot stopped (exit 0)" in output, output[-6000:]
    assert "Traceback" not in output, output[-6000:]


async def test_make_playground_uses_a_bot_already_running_and_leaves_it_running(
    make_playground: Terminal, clone: Path, terminal_env: dict[str, str]
) -> None:
    """`make run` in one terminal, `make playground` in another: the Playground talks to the running bot."""
    port = int(terminal_env["PORT"])
    make_playground.wait_for(URL, START_TIMEOUT)  # the first run installs; its bot is then stopped
    make_playground.press_ctrl_c()
    assert make_playground.process.wait(STOP_TIMEOUT) == 0, make_playground.text[-6000:]
    bot = await asyncio.create_subprocess_exec(
        str(clone / ".venv/bin/python"), "main.py", cwd=clone, env=terminal_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            assert bot.returncode is None and time.monotonic() < deadline, "the bot did not start"
            await asyncio.sleep(0.1)  # bounded readiness polling of another process
        second = Terminal(["make", "playground"], clone, terminal_env)
        try:
            url = second.wait_for(URL, START_TIMEOUT)
            assert "a bot already answers on port" in second.text
            assert BOT_PID.search(second.text) is None, "no second bot is started"
            async with Playground(None, clone / "data" / "driver2") as chat:
                await chat.attach(int(url.group(2)))
                sent = await chat.send_text("help")
                reply = await chat.wait_for_message(after=sent, timeout=30)
            assert "watch" in reply.text
            second.press_ctrl_c()
            assert second.process.wait(STOP_TIMEOUT) == 0, second.text[-6000:]
            assert not listening(int(url.group(2))), "the Playground stopped"
        finally:
            second.close()
        assert bot.returncode is None and listening(port), "the bot someone else started still runs"
    finally:
        if bot.returncode is None:
            bot.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bot.wait(), 30) == 0
