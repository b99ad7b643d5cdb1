"""Shared benchmark plumbing: free ports, subprocesses that serve HTTP, readiness waits, percentiles."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(args: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None,
          python: str | None = None) -> subprocess.Popen[bytes]:
    """Start a Python subprocess (this interpreter, or `python`) from the repo root, its output going to `log`
    (or discarded)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [python or sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out,
        stderr=subprocess.STDOUT,
    )


async def wait_http(url: str, timeout: float = 30.0) -> None:
    """Wait until `url` answers anything below 500, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout}s")
            await asyncio.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class Databases:
    """Where each benchmark bot keeps its state: a SQLite file in `workdir`, or a fresh PostgreSQL database on
    `postgres_url`'s server (its database is used as the maintenance connection) or on a throwaway server
    started from the machine's binaries (tests/pg_server.py). `url("postgresql", …)` is None, with
    `missing` saying why, when neither is available."""

    def __init__(self, workdir: Path, postgres_url: str | None = None) -> None:
        self.workdir = workdir
        self._given = postgres_url
        self._server: object | None = None
        self._names = 0
        self.missing = ""

    def url(self, engine: str, name: str) -> str | None:
        if engine == "sqlite":
            return f"sqlite:///{self.workdir / name}.sqlite3"
        self._names += 1
        database = f"bench_{name}_{os.getpid()}_{self._names}"
        if self._given:
            subprocess.run([sys.executable, "-c", _CREATE_DB, self._given, database], check=True, cwd=ROOT)
            base, _, _ = self._given.rpartition("/")
            return f"{base}/{database}"
        if self._server is None:
            sys.path.insert(0, str(ROOT))
            from tests.pg_server import PostgresServer

            server, self.missing = PostgresServer.find()
            if server is None:
                return None
            server.start()
            self._server = server
        return str(self._server.create_database(database))  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None


_CREATE_DB = """
import asyncio, sys, asyncpg
async def main(url, name):
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""
