"""A real process is SIGKILLed while a handler runs; after a restart the job runs to completion."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from state.sqlite import SqliteDatabase

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "crash_worker.py"
TIMEOUT = 30.0


async def _spawn(db_path: Path, phase: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), str(db_path), phase,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _line(process: asyncio.subprocess.Process) -> list[str]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
    if not line:
        _, err = await process.communicate()
        raise AssertionError(f"worker exited early ({process.returncode}): {err.decode()}")
    return line.decode().split()


async def test_a_job_killed_mid_run_runs_again_after_restart(tmp_path: Path) -> None:
    db_path = tmp_path / "crash.sqlite3"
    first = await _spawn(db_path, "first")
    try:
        word, job_id, attempts = await _line(first)
        assert (word, attempts) == ("RUNNING", "1")
    finally:
        first.send_signal(signal.SIGKILL)
        await first.communicate()
    assert first.returncode == -signal.SIGKILL

    second = await _spawn(db_path, "second")
    try:
        assert await _line(second) == ["RUNNING", job_id, "2"], "the run the kill interrupted runs again"
        assert await _line(second) == ["DONE", job_id, "2"]
        _, err = await asyncio.wait_for(second.communicate(), TIMEOUT)
        assert second.returncode == 0, err.decode()
    finally:
        if second.returncode is None:
            second.kill()
            await second.communicate()

    db = SqliteDatabase(str(db_path))
    await db.open()
    try:
        assert await db.fetchall("SELECT * FROM scheduled_jobs") == [], "completed, so gone"
    finally:
        await db.close()
