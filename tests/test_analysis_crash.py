"""An analysis survives `kill -9`: its jobs are rows, so after a restart it resumes and the result arrives."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp

from tests.connector_double import ConnectorDouble, RecordedRequest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start(db: Path, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = _free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "DATABASE_URL": f"sqlite:///{db}",
           "MicrosoftAppId": "", "MicrosoftAppPassword": "", "PRICE_SOURCE": "demo", "ANALYZE_SECONDS": "4",
           "PROGRESS_DELAYS": "1,2", "LOG_LEVEL": "INFO"}
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        process = await asyncio.create_subprocess_exec(
            sys.executable, "main.py", cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return process, base
            except aiohttp.ClientError:
                pass
            assert process.returncode is None, log.read_text()
            assert time.monotonic() < deadline, f"bot did not start:\n{log.read_text()}"
            await asyncio.sleep(0.05)


def _texts(request: RecordedRequest) -> str:
    return str(request.body)


async def test_analysis_resumes_after_sigkill(tmp_path: Path) -> None:
    db, log = tmp_path / "bot.sqlite3", tmp_path / "bot.log"
    async with ConnectorDouble() as double:
        process, base = await _start(db, log)
        try:
            activity = {
                "type": "message", "id": "m1", "text": "analyze gadget", "channelId": "msteams",
                "serviceUrl": double.url, "conversation": {"id": "dm-1", "conversationType": "personal"},
                "from": {"id": "29:ada", "name": "Ada"}, "recipient": {"id": "28:bot"},
                "channelData": {"tenant": {"id": "t1"}},
            }
            async with aiohttp.ClientSession() as session, session.post(f"{base}/api/messages",
                                                                        json=activity) as response:
                assert response.status == 200
            ack = await double.wait_for(lambda r: "Working on it" in _texts(r), timeout=10)
            await double.wait_for(lambda r: "Still working" in _texts(r), timeout=10, since=ack.seq)
            process.send_signal(signal.SIGKILL)  # mid-analysis: no shutdown, nothing flushed on purpose
            await process.wait()
            killed_at = double.last_seq
            assert not any("Analysis of gadget" in _texts(r) for r in double.requests)

            process, base = await _start(db, log)
            result = await double.wait_for(lambda r: "Analysis of gadget is ready" in _texts(r)
                                           or "Analysis of **gadget**" in _texts(r), timeout=30, since=killed_at)
            assert result.op == "send" and result.conversation_id == "dm-1"
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 15)
        assert process.returncode == 0, log.read_text()[-3000:]
        results = [r for r in double.requests if "Analysis of gadget is ready" in _texts(r)]
        assert len(results) == 1, "resumed once, delivered once"
