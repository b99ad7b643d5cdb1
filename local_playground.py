"""`make playground`: the bot and the Microsoft 365 Agents Playground together, to chat with the bot locally.

Starts the bot (`python main.py`, local and unauthenticated on 127.0.0.1:PORT; a bot already answering there is
used as it is), then the Playground pinned in `tests/node` (`make playground` runs `npm ci` there first) against
it, prints the URL to open, and opens a browser when the machine has a graphical one. Ctrl-C (or SIGTERM) stops
both, and the exit code is 0 when both stopped cleanly.

Ctrl-C goes to the terminal's foreground process group, and `make` dies of it (exit 130) whatever its child does.
So, on a terminal, this process becomes the foreground group itself (as a shell does for a job): Ctrl-C reaches
it, the bot and the Playground, not `make`; the terminal is handed back before exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import webbrowser
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TypeVar

import aiohttp

ROOT = Path(__file__).resolve().parent
CLI = ROOT / "tests" / "node" / "node_modules" / "@microsoft" / "m365agentsplayground" / "cli.js"
WORK_DIR = ROOT / "data" / "playground"  # the Playground's cwd (it writes devTools/ there) and its log
LISTENING = re.compile(rb"Listening on (\d+)")
BOT_START_TIMEOUT = 120.0
PLAYGROUND_START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
T = TypeVar("T")
_DRAINS: set[asyncio.Future[None]] = set()  # keeps the output pumps referenced


class LaunchError(RuntimeError):
    """Something the person has to fix before the Playground can run (said in one line)."""


def say(line: str) -> None:
    print(f"[playground] {line}", flush=True)


@contextlib.contextmanager
def foreground_process_group() -> Iterator[None]:
    """On a terminal, make this process (and so its children) the foreground process group until the end."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:  # no controlling terminal: nobody can press Ctrl-C
        yield
        return
    previous = os.getpgrp()
    try:
        if os.tcgetpgrp(tty) != previous:  # started in the background: leave the terminal alone
            yield
            return
        os.setpgid(0, 0)
        with _ignoring(signal.SIGTTOU):  # a background group may not change the terminal without it
            os.tcsetpgrp(tty, os.getpgrp())
        try:
            yield
        finally:
            with _ignoring(signal.SIGTTOU), contextlib.suppress(OSError):
                os.tcsetpgrp(tty, previous)
    finally:
        os.close(tty)


@contextlib.contextmanager
def _ignoring(signum: signal.Signals) -> Iterator[None]:
    old = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, old)


def bot_environment() -> dict[str, str]:
    """The bot runs local and unauthenticated: the Playground sends no channel token (and loopback only)."""
    env = dict(os.environ)
    env.update({"HOST": "127.0.0.1", "MicrosoftAppId": "", "MicrosoftAppPassword": ""})
    return env


def bot_port(env: dict[str, str]) -> int:
    from bot.config import ConfigError, load_config

    try:
        return load_config(env).port
    except ConfigError as exc:
        raise LaunchError(f"configuration error: {exc}") from None


def graphical_browser() -> Callable[[str], object] | None:
    """`webbrowser.open` when a graphical browser is there; None on a headless machine or a console browser."""
    if os.environ.get("TEAMSAPPTESTER_BROWSER", "").lower() == "none" or os.environ.get("BROWSER") == "none":
        return None
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return None
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return None
    if type(browser) is webbrowser.GenericBrowser:  # lynx, w3m, …: would take over this terminal
        return None
    return browser.open


async def answers(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return resp.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


async def wait_until_live(session: aiohttp.ClientSession, url: str, bot: asyncio.subprocess.Process) -> None:
    """Until the bot's /livez answers; fails when the bot exits first or takes too long."""
    deadline = asyncio.get_running_loop().time() + BOT_START_TIMEOUT
    while not await answers(session, url):
        if bot.returncode is not None:
            raise LaunchError(f"the bot exited with code {bot.returncode} before listening (its log is above)")
        if asyncio.get_running_loop().time() > deadline:
            raise LaunchError(f"the bot did not answer {url} within {BOT_START_TIMEOUT:.0f} s")
        await asyncio.sleep(0.2)  # a person waits for a process here; nothing to be notified by


async def start_playground(endpoint: str) -> tuple[asyncio.subprocess.Process, int]:
    node = shutil.which("node")
    if node is None:
        raise LaunchError("node not found on PATH (install Node.js 20+ with npm)")
    if not CLI.is_file():
        raise LaunchError(f"{CLI} is missing: run `make playground` (it runs `npm ci` in tests/node)")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "TEAMSAPPTESTER_BROWSER": "none",  # this launcher decides whether to open one
        "M365_AGENTS_PLAYGROUND_LOGFILE": str(WORK_DIR / "playground.log"),
    })
    for key in ("NO_PROXY", "no_proxy"):  # the bot and the Playground talk over loopback, never via a proxy
        env[key] = ",".join(filter(None, [env.get(key), "localhost,127.0.0.1,::1"]))
    port = os.environ.get("PLAYGROUND_PORT", "56150")
    proc = await asyncio.create_subprocess_exec(
        node, str(CLI), "-e", endpoint, "-c", "msteams", "-p", port, "--disable-telemetry",
        cwd=WORK_DIR, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = WORK_DIR / "playground.out"
    started = False
    try:
        with output.open("wb") as sink:
            async with asyncio.timeout(PLAYGROUND_START_TIMEOUT):
                while line := await proc.stdout.readline():
                    sink.write(line)
                    if found := LISTENING.search(line):
                        started = True
                        drain = asyncio.ensure_future(_drain(proc.stdout, output))
                        _DRAINS.add(drain)
                        drain.add_done_callback(_DRAINS.discard)
                        return proc, int(found.group(1))
    except TimeoutError:
        pass
    finally:
        if not started:  # timed out, exited, or the start was cancelled by Ctrl-C
            await stop_process(proc, signal.SIGTERM, "the Playground")
    raise LaunchError(f"the Playground did not start (exit {proc.returncode}); see {output}")


async def _drain(stream: asyncio.StreamReader, output: Path) -> None:
    """The Playground's later output goes to its file, not over the bot's log in the terminal."""
    with output.open("ab") as sink:
        while line := await stream.readline():
            sink.write(line)
            sink.flush()


async def stop_process(proc: asyncio.subprocess.Process, signum: signal.Signals, name: str) -> int:
    """Signal `proc` (unless it is gone) and wait for it; SIGKILL after STOP_TIMEOUT."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await proc.wait()
        except TimeoutError:
            say(f"{name} did not stop within {STOP_TIMEOUT:.0f} s: killing it")
            proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1


async def run() -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    env = bot_environment()
    port = bot_port(env)
    endpoint = f"http://127.0.0.1:{port}/api/messages"
    bot: asyncio.subprocess.Process | None = None
    playground: asyncio.subprocess.Process | None = None
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            if await answers(session, f"http://127.0.0.1:{port}/livez"):
                say(f"a bot already answers on port {port}: the Playground talks to it (Ctrl-C leaves it running)")
            else:
                bot = await asyncio.create_subprocess_exec(  # its stdout holds only the banner for `make run`
                    sys.executable, str(ROOT / "main.py"), env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL)
                say(f"bot starting (pid {bot.pid}) on {endpoint}")
                await _until_or_stopped(wait_until_live(session, f"http://127.0.0.1:{port}/livez", bot), stop)
        started = None if stop.is_set() else await _until_or_stopped(start_playground(endpoint), stop)
        if started is None:
            return await shut_down(bot, playground)
        playground, pg_port = started
        url = f"http://localhost:{pg_port}"
        say(f"Playground (pid {playground.pid}) for the bot at {endpoint}")
        say(f"open {url} and type help   (Ctrl-C stops {'both' if bot else 'the Playground'})")
        if (open_browser := graphical_browser()) is not None:
            open_browser(url)
        watched = [asyncio.ensure_future(p.wait()) for p in (bot, playground) if p is not None]
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopping, *watched], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not stop.is_set() and not (stopped_on_request(bot) and stopped_on_request(playground)):
            gone = "the bot" if bot is not None and bot.returncode is not None else "the Playground"
            say(f"{gone} exited on its own; stopping the rest")
            await shut_down(bot, playground)
            return 1
        return await shut_down(bot, playground)
    except LaunchError as exc:
        say(str(exc))
        await shut_down(bot, playground)
        return 1


async def _until_or_stopped(work: Coroutine[object, object, T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None when a stop is asked for first (then `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def stopped_on_request(proc: asyncio.subprocess.Process | None) -> bool:
    """Exited as if asked to: 0 (the bot exits 0 only when told to stop) or by the terminal's SIGINT."""
    return proc is None or proc.returncode in (None, 0, -signal.SIGINT, 128 + signal.SIGINT)


async def shut_down(bot: asyncio.subprocess.Process | None, playground: asyncio.subprocess.Process | None) -> int:
    """Stop the Playground, then the bot (SIGINT: it drains and closes its database); 0 when both stopped well."""
    if playground is not None:
        await stop_process(playground, signal.SIGTERM, "the Playground")
    code = 0
    if bot is not None:
        code = await stop_process(bot, signal.SIGINT, "the bot")
        say(f"bot stopped (exit {code})")
    return 0 if code == 0 else 1


def main() -> int:
    with foreground_process_group():
        try:
            return asyncio.run(run())
        except LaunchError as exc:
            say(str(exc))
            return 1


if __name__ == "__main__":
    sys.exit(main())
