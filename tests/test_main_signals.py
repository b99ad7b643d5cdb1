"""`python main.py` exits 0 however many stop signals arrive: Ctrl-C reaches every process in the terminal's
process group (`make playground`'s launcher forwards one too), and supervisors may repeat theirs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from bot_process import start_bot

STOP_TIMEOUT = 30.0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_repeated_stop_signals_still_exit_0(tmp_path: Path, signum: signal.Signals) -> None:
    bot = await start_bot(tmp_path, f"sqlite:///{tmp_path / 'bot.sqlite3'}", "signals", "token")
    deadline = time.monotonic() + STOP_TIMEOUT
    sent = 0
    try:
        # Keep signalling while it stops and exits: one of them lands after the event loop has closed.
        # os.kill, not Process.send_signal: Popen.send_signal polls first and may reap the exited child before
        # asyncio's child watcher does, which then reports "Unknown child process ... returncode 255".
        while bot.process.returncode is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(bot.process.pid, signum)
                sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(bot.process.wait(), 0.005)
    finally:
        if bot.process.returncode is None:
            await bot.kill()
    assert sent > 1
    assert bot.process.returncode == 0, f"exit {bot.process.returncode} after {sent} signals\n{bot.tail()}"
    assert "stopped" in bot.tail()
