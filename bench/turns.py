"""Turn throughput: the stock SDK echo bot vs. ours, each against the connector double, in one run.

    python bench/turns.py [--turns 2000] [--concurrency 50] [--rounds 3] [--postgres-url postgresql://…]

Each bot runs in its own process, the connector double in another, and this process drives the load.
A turn is one POST /api/messages carrying a message; its latency ends when the bot has replied to the
connector and answered the POST. Ours persists conversation and user state every turn: once on SQLite,
once on PostgreSQL (`--postgres-url`'s server, or a throwaway server from the machine's binaries), side
by side. The last line is JSON with the figures the issues name (medians over the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Databases, free_port, median, percentile, spawn, stop, wait_http

LATENCY_CONCURRENCY = 10

STOCK_ECHO = """
import sys
from aiohttp import web
from botbuilder.core import ActivityHandler, MessageFactory, TurnContext
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication


class DefaultConfig:
    PORT = int(sys.argv[1])
    APP_ID = ""
    APP_PASSWORD = ""
    APP_TYPE = "MultiTenant"
    APP_TENANTID = ""


class EchoBot(ActivityHandler):
    async def on_message_activity(self, turn_context: TurnContext):
        await turn_context.send_activity(MessageFactory.text(f"Echo: {turn_context.activity.text}"))


CONFIG = DefaultConfig()
ADAPTER = CloudAdapter(ConfigurationBotFrameworkAuthentication(CONFIG))
BOT = EchoBot()


async def messages(req: web.Request) -> web.Response:
    return await ADAPTER.process(req, BOT)


async def healthz(req: web.Request) -> web.Response:
    return web.Response(text="ok")


APP = web.Application()
APP.router.add_post("/api/messages", messages)
APP.router.add_get("/healthz", healthz)
web.run_app(APP, host="127.0.0.1", port=CONFIG.PORT, print=None, access_log=None)
"""


def activity(service_url: str, worker: int, n: int, text: str = "help") -> dict[str, object]:
    return {
        "type": "message",
        "id": f"m{worker}-{n}",
        "text": text,
        "channelId": "msteams",
        "serviceUrl": service_url,
        "conversation": {"id": f"bench-conv-{worker}", "conversationType": "personal", "tenantId": "t1"},
        "from": {"id": f"29:user-{worker}", "name": f"User {worker}", "aadObjectId": f"aad-{worker}"},
        "recipient": {"id": "28:bot", "name": "Bot"},
        "channelData": {"tenant": {"id": "t1"}},
    }


async def drive(url: str, service_url: str, turns: int, concurrency: int) -> tuple[float, list[float], int]:
    """Send `turns` message activities with `concurrency` workers; returns (seconds, latencies_ms, errors)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(turns))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(w: int) -> None:
            nonlocal errors
            for n in counter:
                started = time.perf_counter()
                async with session.post(url, json=activity(service_url, w, n)) as response:
                    await response.read()
                    if response.status >= 300:
                        errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return time.perf_counter() - started, latencies, errors


async def measure(name: str, url: str, service_url: str, turns: int, concurrency: int) -> dict[str, float]:
    await drive(url, service_url, min(200, turns), concurrency)  # warm-up: connections, caches, tables
    seconds, latencies, errors = await drive(url, service_url, turns, concurrency)
    if errors:
        raise RuntimeError(f"{name}: {errors} of {turns} turns failed")
    return {
        "turns_s": turns / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


async def start_analyses(url: str, service_url: str, count: int) -> None:
    """`count` users each start a long analysis (in their own conversations)."""
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            body = activity(service_url, 10_000 + i, 0, text="analyze gadget")
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status >= 300:
                    raise RuntimeError(f"starting analysis {i} failed: HTTP {response.status}")


async def run(turns: int, concurrency: int, rounds: int, postgres_url: str | None) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-turns-"))
    databases = Databases(workdir, postgres_url)
    double_port, stock_port, ours_port, busy_port = free_port(), free_port(), free_port(), free_port()
    pg_url, pg_port = databases.url("postgresql", "turns"), free_port()
    (workdir / "stock_echo.py").write_text(STOCK_ECHO)
    processes = [
        spawn(["tests/connector_double.py", "--port", str(double_port)], log=workdir / "double.log"),
        spawn([str(workdir / "stock_echo.py"), str(stock_port)], log=workdir / "stock.log"),
        spawn(
            ["main.py"],
            env={
                "PORT": str(ours_port),
                "DATABASE_URL": f"sqlite:///{workdir}/bot.sqlite3",
                "LOG_LEVEL": "WARNING",
                "MicrosoftAppId": "",
                "MicrosoftAppPassword": "",
            },
            log=workdir / "ours.log",
        ),
        spawn(
            ["main.py"],
            env={
                "PORT": str(busy_port),
                "DATABASE_URL": f"sqlite:///{workdir}/busy.sqlite3",
                "LOG_LEVEL": "WARNING",
                "MicrosoftAppId": "",
                "MicrosoftAppPassword": "",
                "PRICE_SOURCE": "demo",
                "ANALYZE_SECONDS": "600",
                "PROGRESS_DELAYS": "1,2,3,4,5",
            },
            log=workdir / "busy.log",
        ),
    ]
    compared = [("stock", stock_port), ("ours", ours_port)]
    if pg_url is not None:
        processes.append(spawn(["main.py"], env={
            "PORT": str(pg_port), "DATABASE_URL": pg_url, "LOG_LEVEL": "WARNING", "MicrosoftAppId": "",
            "MicrosoftAppPassword": "",
        }, log=workdir / "ours-pg.log"))
        compared.append(("pg", pg_port))
    else:
        print(f"PostgreSQL column skipped: {databases.missing}")
    service_url = f"http://127.0.0.1:{double_port}/"
    results: dict[str, list[dict[str, float]]] = {"stock": [], "ours": [], "pg": [], "quiet": [], "busy": []}
    try:
        await wait_http(service_url + "healthz")
        for _, port in [*compared, ("busy", busy_port)]:
            await wait_http(f"http://127.0.0.1:{port}/healthz")
        await start_analyses(f"http://127.0.0.1:{busy_port}/api/messages", service_url, 100)
        for _ in range(rounds):  # alternate so drift on the machine hits all alike
            for name, port in compared:
                url = f"http://127.0.0.1:{port}/api/messages"
                results[name].append(await measure(name, url, service_url, turns, concurrency))
            # turn latency (not throughput) with long work going on: a lighter load, side by side
            for name, port in (("quiet", ours_port), ("busy", busy_port)):
                url = f"http://127.0.0.1:{port}/api/messages"
                results[name].append(await measure(name, url, service_url, turns // 2, LATENCY_CONCURRENCY))
    finally:
        for process in processes:
            stop(process)
        databases.close()

    def med(name: str, key: str) -> float:
        return median([r[key] for r in results[name]]) if results[name] else float("nan")

    print(f"{turns} message turns at concurrency {concurrency}, {rounds} rounds each (median shown)")
    print(f"{'bot':<28}{'turns/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'stock SDK echo (CloudAdapter)':<28}{med('stock', 'turns_s'):>10.0f}"
          f"{med('stock', 'p50_ms'):>10.1f}{med('stock', 'p99_ms'):>10.1f}")
    print(f"{'ours (state in SQLite)':<28}{med('ours', 'turns_s'):>10.0f}"
          f"{med('ours', 'p50_ms'):>10.1f}{med('ours', 'p99_ms'):>10.1f}")
    if results["pg"]:
        print(f"{'ours (state in PostgreSQL)':<28}{med('pg', 'turns_s'):>10.0f}"
              f"{med('pg', 'p50_ms'):>10.1f}{med('pg', 'p99_ms'):>10.1f}")
    print(f"\nturn latency at concurrency {LATENCY_CONCURRENCY}, {turns // 2} turns")
    print(f"{'ours, nothing running':<28}{med('quiet', 'turns_s'):>10.0f}"
          f"{med('quiet', 'p50_ms'):>10.1f}{med('quiet', 'p99_ms'):>10.1f}")
    print(f"{'ours, 100 analyses running':<28}{med('busy', 'turns_s'):>10.0f}"
          f"{med('busy', 'p50_ms'):>10.1f}{med('busy', 'p99_ms'):>10.1f}")
    return {
        "stock_echo_turns_s": round(med("stock", "turns_s"), 1),
        "ours_turns_s": round(med("ours", "turns_s"), 1),
        "ratio": round(med("ours", "turns_s") / med("stock", "turns_s"), 2),
        "stock_p99_ms": round(med("stock", "p99_ms"), 1),
        "ours_p99_ms": round(med("ours", "p99_ms"), 1),
        "ours_p99_ms_100_analyses": round(med("busy", "p99_ms"), 1),
        **({"pg_turns_s": round(med("pg", "turns_s"), 1), "pg_p99_ms": round(med("pg", "p99_ms"), 1),
            "pg_vs_sqlite": round(med("pg", "turns_s") / med("ours", "turns_s"), 2)} if results["pg"] else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres-url", help="a PostgreSQL server to create the benchmark database on "
                                               "(default: a throwaway server from the machine's binaries)")
    args = parser.parse_args()
    figures = asyncio.run(run(args.turns, args.concurrency, args.rounds, args.postgres_url))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
