"""A notice to a whole organisation: one POST /api/notify to N people across 200 tenants, from one bot process.

    python bench/broadcast.py [--engine sqlite|postgresql] [--recipients 100000] [--tenants 200]
                              [--small N] [--postgres-url postgresql://user@host/db] [--scrape-every 15]

Each round seeds N personal conversations across `--tenants` tenants straight into a fresh database
(`ConversationReferences.upsert_many`), starts the connector double (no throttling, its own process) and the bot
(`python main.py`, TEAMS_TENANT_RPS high), then POSTs one notify to everyone and watches:

- accept_s: the POST until its 202; expanded_s: until GET /api/notify/batches/{id} says every recipient is
  written; done_s: until the double has accepted a message in every seeded conversation;
- sends_per_s: N / done_s; cpu_ms_per_send: the bot process's user+system CPU from the POST to done, per send;
- idle_rss_mb: the bot's RSS after start-up, before the POST; peak_rss_mb: the largest RSS sampled every 100 ms
  from the POST to done; rss_growth_mb_small_to_large: this round's peak minus that of a round with `--small`
  recipients (default N/10, fresh database and processes);
- db_bytes_per_recipient: the outbox table and its indexes at the end, per recipient (SQLite: `dbstat`;
  PostgreSQL: `pg_total_relation_size`, dead row versions included), and the same split by relation (the table, then
  each index: `db_bytes_by_relation`); on PostgreSQL also db_live_bytes_per_recipient after VACUUM FULL (what the
  rows themselves take);
- busy turns: while the broadcast is accepted, written and sent, someone else chats with the bot: a "help"
  message every 250 ms from the POST until the last send, from 20 other conversations in turn; p50/p99/max of the HTTP
  answer time of those turns, and when the slowest began (seconds after the POST: expanding or sending?);
- scrapes: as Prometheus does in production, GET /metrics every `--scrape-every` seconds (15; 0: none) from the
  POST until the last send (the outbox counts and tenant queues are read at each scrape); how many, and the
  slowest one's answer time;
- lost / duplicates: seeded conversations that got no message / more than one, as the double counted them;
- report: after the sends, GET /api/notify/batches/{id}/recipients as CSV, read as it streams: rows, seconds,
  rows per second, size, and the bot's peak RSS while it streams (sampled every 100 ms) and its growth over the
  RSS when the report began (the report holds one page of 1,000 rows at a time). The report's rows are every
  recipient row: the seeded conversations plus the busy turns' 20 conversations when the expansion reached them.

The last line is JSON with the figures of the large round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, Databases, free_port, percentile, spawn, stop, wait_http

sys.path.insert(0, str(ROOT))
from fanout import FanoutDouble

from state.clock import SystemClock
from state.db import connect
from state.references import ConversationReferences
from tests.connector_double import RecordedRequest, serve
from tests.outbox_seed import Conversation, conversation_ids, record

TOKEN = "bench-broadcast-token"
TEXT = "All staff: the office is closed on Friday"
BUSY_TENANT = "tenant-busy"
BUSY = [f"a:busy-chat-{n:02d}" for n in range(20)]  # people chatting with the bot meanwhile, in turn (each one
# every 5 s: one conversation at 4 a second would pass Teams' 60 per 30 s and queue its own replies)
BUSY_EVERY_S = 0.25
SAMPLE_S = 0.1
TIMEOUT_S = 1800.0
Json = dict[str, Any]

TARGETS = {"accept_s": 1.0, "cpu_ms_per_send": 0.25, "db_bytes_per_recipient": 300, "busy_turn_p99_ms": 250,
           "busy_turn_max_ms": 1000}


# ---- the double, as its own process (--role double) ----------------------------------------------------


class BroadcastDouble(FanoutDouble):
    """The fan-out double with an O(1) progress count (its full count walks every seeded conversation)."""

    def __init__(self, conversations: Sequence[Conversation], **options: Any) -> None:
        super().__init__(conversations, **options)
        for conversation_id in BUSY:
            self.add_conversation(conversation_id, BUSY_TENANT)
        self.first_time: set[str] = set()

    def _op_send(self, record: RecordedRequest, info: Any) -> tuple[int, Json]:
        answer = super()._op_send(record, info)
        if record.conversation_id not in BUSY:
            self.first_time.add(record.conversation_id or "")
        return answer

    _op_reply = _op_send

    def make_app(self) -> web.Application:
        app = super().make_app()

        async def progress(request: web.Request) -> web.Response:
            return web.json_response({"reached": len(self.first_time), "last_accepted_at": self.last_accepted_at,
                                      "pid": os.getpid()})

        app.router.add_get("/_bench/progress", progress)
        return app


def serve_double(args: argparse.Namespace) -> None:
    double = BroadcastDouble(conversation_ids(args.tenants, args.recipients // args.tenants), max_records=1000)
    gc.collect()  # a million seeded conversations are millions of objects: a full collection walking them
    gc.freeze()   # stalled the double (Teams) for most of a second, and the bot's replies with it
    asyncio.run(serve(double, "127.0.0.1", args.port))


# ---- one round ------------------------------------------------------------------------------------------


async def seed(database_url: str, service_url: str, conversations: Sequence[Conversation]) -> None:
    db = connect(database_url)
    await db.open()
    try:
        references = ConversationReferences(db, SystemClock())
        for start in range(0, len(conversations), 2000):
            await references.upsert_many([record(c, t, service_url) for c, t in conversations[start:start + 2000]],
                                         reactivate=True)
        await references.upsert_many([record(c, BUSY_TENANT, service_url) for c in BUSY], reactivate=True)
    finally:
        await db.close()


async def db_bytes(database_url: str, recipients: int) -> tuple[float, float | None, Json]:
    """(bytes of the outbox table and its indexes per recipient, the same after VACUUM FULL on PostgreSQL, and the
    raw bytes per recipient of each relation: the table, its TOAST and every index)."""
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            sizes = connection.execute(
                "SELECT name, SUM(pgsize) FROM dbstat WHERE name IN "
                "(SELECT name FROM sqlite_master WHERE tbl_name = 'outbox') GROUP BY name").fetchall()
        connection.close()
        parts = {str(name): size / recipients for name, size in sizes}
        return sum(size for _, size in sizes) / recipients, None, parts
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        raw = await connection.fetchval("SELECT pg_total_relation_size('outbox')")
        sizes = await connection.fetch(
            "SELECT 'outbox' AS name, pg_relation_size('outbox') + pg_relation_size('outbox', 'fsm') "
            "+ pg_relation_size('outbox', 'vm') + COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0) "
            "AS size FROM pg_class c WHERE c.relname = 'outbox' UNION ALL "
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
            "WHERE indrelid = 'outbox'::regclass")
        await connection.execute("VACUUM FULL outbox")
        live = await connection.fetchval("SELECT pg_total_relation_size('outbox')")
    finally:
        await connection.close()
    parts = {str(r["name"]): int(r["size"]) / recipients for r in sizes}
    return raw / recipients, live / recipients, parts


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def busy_turns(session: aiohttp.ClientSession, bot_url: str, service_url: str, done: asyncio.Event,
                     latencies: list[float], slowest: list[float]) -> None:
    """A "help" every 250 ms until `done`; each turn's HTTP answer time (turns overlap if one is slow), and in
    `slowest` [seconds, seconds after the first turn it started] of the slowest."""
    origin = time.perf_counter()
    ids = itertools.count()
    tasks: set[asyncio.Task[None]] = set()

    async def turn(n: int) -> None:
        activity = {
            "type": "message", "id": f"busy-{n}", "text": "help", "channelId": "msteams", "serviceUrl": service_url,
            "conversation": {"id": BUSY[n % len(BUSY)], "conversationType": "personal"},
            "from": {"id": f"29:busy-person-{n % len(BUSY)}", "name": "Busy Person"},
            "recipient": {"id": "28:bot", "name": "Bot"}, "channelData": {"tenant": {"id": BUSY_TENANT}},
        }
        started = time.perf_counter()
        async with session.post(bot_url + "api/messages", json=activity) as response:
            await response.read()
            if response.status >= 300:
                raise RuntimeError(f"a busy turn answered {response.status}")
        latencies.append(time.perf_counter() - started)
        if not slowest or latencies[-1] > slowest[0]:
            slowest[:] = [latencies[-1], started - origin]

    next_at = time.monotonic()
    while not done.is_set():
        task = asyncio.create_task(turn(next(ids)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += BUSY_EVERY_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), max(0.0, next_at - time.monotonic()))
    if tasks:
        await asyncio.gather(*tasks)


async def scrapes(session: aiohttp.ClientSession, bot_url: str, done: asyncio.Event, every_s: float,
                  latencies: list[float]) -> None:
    """GET /metrics every `every_s` seconds until `done`, as Prometheus would; each scrape's answer time."""
    while every_s > 0 and not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), every_s)
        if done.is_set():
            break
        started = time.perf_counter()
        async with session.get(bot_url + "metrics") as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"a scrape answered {response.status}")
        latencies.append(time.perf_counter() - started)


async def run_round(workdir: Path, databases: Databases, engine: str, recipients: int, tenants: int,
                    scrape_every_s: float) -> Json:
    name = f"n{recipients}"
    database_url = databases.url(engine, name)
    if database_url is None:
        raise RuntimeError(f"no PostgreSQL: {databases.missing}")
    per_tenant = recipients // tenants
    conversations = conversation_ids(tenants, per_tenant)
    gc.collect()  # (the driver's own pauses must not count as the bot's: see serve_double)
    gc.freeze()
    n = len(conversations)
    double_port = free_port()
    double = spawn(["bench/broadcast.py", "--role", "double", "--port", str(double_port), "--tenants", str(tenants),
                    "--recipients", str(n)], log=workdir / f"{name}-double.log")
    processes = [double]
    service_url = f"http://127.0.0.1:{double_port}/"
    try:
        seeded_at = time.monotonic()
        await seed(database_url, service_url, conversations)
        seed_s = time.monotonic() - seeded_at
        port = free_port()
        bot = spawn(["main.py"], env={
            "HOST": "127.0.0.1", "PORT": str(port), "DATABASE_URL": database_url, "NOTIFY_TOKEN": TOKEN,
            "TEAMS_TENANT_RPS": "1000000", "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "PRICE_SOURCE": "none",
            "MicrosoftAppId": "", "MicrosoftAppPassword": "", "MicrosoftAppTenantId": "",
        }, log=workdir / f"{name}-bot.log")
        processes.append(bot)
        bot_url = f"http://127.0.0.1:{port}/"
        await wait_http(service_url + "healthz", timeout=120)
        await wait_http(bot_url + "healthz", timeout=120)
        process = psutil.Process(bot.pid)
        async with aiohttp.ClientSession() as session:
            idle = 0
            for _ in range(20):  # two seconds after start-up: the idle footprint
                idle = max(idle, process.memory_info().rss)
                await asyncio.sleep(SAMPLE_S)
            done = asyncio.Event()
            latencies: list[float] = []
            slowest: list[float] = []
            cpu = cpu_seconds(process)
            started = time.monotonic()
            busy = asyncio.create_task(busy_turns(session, bot_url, service_url, done, latencies, slowest))
            scraped: list[float] = []
            scraping = asyncio.create_task(scrapes(session, bot_url, done, scrape_every_s, scraped))
            async with session.post(bot_url + "api/notify", json={"to": {"all": True}, "text": TEXT},
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                body = await response.json()
            accept_s = time.monotonic() - started
            if response.status != 202:
                raise RuntimeError(f"POST /api/notify answered {response.status}: {str(body)[:300]}")
            peak, expanded_s, done_s, polls = idle, None, None, 0
            while time.monotonic() - started < TIMEOUT_S:
                peak = max(peak, process.memory_info().rss)
                polls += 1
                if expanded_s is None and polls % 5 == 0:
                    async with session.get(f"{bot_url}api/notify/batches/{body['batchId']}",
                                           headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
                        if (await answer.json())["expansion"] == "expanded":
                            expanded_s = time.monotonic() - started
                if polls % 5 == 0:
                    async with session.get(service_url + "_bench/progress") as answer:
                        progress = await answer.json()
                    if progress["reached"] >= n:
                        done_s = progress["last_accepted_at"] - started
                        break
                await asyncio.sleep(SAMPLE_S)
            cpu = cpu_seconds(process) - cpu
            done.set()
            await busy
            await scraping
            async with session.get(service_url + "_bench/delivery") as answer:
                delivery = await answer.json()
            report_figures = await stream_report(session, bot_url, body["batchId"], process)
        stop(bot)
        processes.remove(bot)
        bytes_raw, bytes_live, parts = await db_bytes(database_url, n)
    finally:
        for process_ in processes:
            stop(process_)
    if done_s is None:
        raise RuntimeError(f"only {delivery['reached']} of {n} conversations reached within {TIMEOUT_S:.0f} s")
    mb = 1024 * 1024
    return {
        "recipients": n, "engine": engine, "seed_s": round(seed_s, 1),
        "accept_s": round(accept_s, 3), "expanded_s": round(expanded_s, 2) if expanded_s else None,
        "done_s": round(done_s, 2), "sends_per_s": round(n / done_s, 1),
        "cpu_ms_per_send": round(cpu / n * 1000, 4),
        "peak_rss_mb": round(peak / mb, 1), "idle_rss_mb": round(idle / mb, 1),
        "db_bytes_per_recipient": round(bytes_raw, 1),
        "db_live_bytes_per_recipient": round(bytes_live, 1) if bytes_live is not None else None,
        "db_bytes_by_relation": {name: round(size, 1) for name, size in sorted(parts.items(), key=lambda p: -p[1])},
        "busy_turns": len(latencies),
        "busy_turn_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "busy_turn_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "busy_turn_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "busy_turn_max_at_s": round(slowest[1], 1) if slowest else None,
        "lost": int(delivery["lost"]), "duplicates": int(delivery["duplicated"]),
        "scrape_every_s": scrape_every_s, "scrapes": len(scraped),
        "scrape_max_ms": round(max(scraped) * 1000, 1) if scraped else None,
        **report_figures,
    }


async def stream_report(session: aiohttp.ClientSession, bot_url: str, batch_id: str,
                        process: psutil.Process) -> Json:
    """GET the delivery report as CSV (every recipient, after the sends), reading it as it streams; the bot's
    RSS sampled every 100 ms meanwhile."""
    started = sampled = time.monotonic()
    before = peak = process.memory_info().rss
    rows, size = 0, 0
    async with session.get(f"{bot_url}api/notify/batches/{batch_id}/recipients",
                           headers={"Authorization": f"Bearer {TOKEN}", "Accept": "text/csv"}) as answer:
        if answer.status != 200:
            raise RuntimeError(f"the report answered {answer.status}")
        async for chunk in answer.content.iter_chunked(1 << 16):
            rows += chunk.count(b"\r\n")
            size += len(chunk)
            if time.monotonic() - sampled >= SAMPLE_S:
                peak, sampled = max(peak, process.memory_info().rss), time.monotonic()
    seconds = time.monotonic() - started
    peak = max(peak, process.memory_info().rss)
    return {"report_rows": rows - 1, "report_s": round(seconds, 2), "report_rows_per_s": round((rows - 1) / seconds),
            "report_mb": round(size / 1024 / 1024, 1), "report_peak_rss_mb": round(peak / 1024 / 1024, 1),
            "report_rss_growth_mb": round((peak - before) / 1024 / 1024, 1)}


def report(small: Json | None, large: Json) -> Json:
    figures = dict(large)
    figures["rss_growth_mb_small_to_large"] = (
        round(large["peak_rss_mb"] - small["peak_rss_mb"], 1) if small is not None else None)
    figures["small_recipients"] = small["recipients"] if small is not None else None
    figures["small_peak_rss_mb"] = small["peak_rss_mb"] if small is not None else None
    rows = [("recipients", "recipients", None), ("seeding (upsert_many), s", "seed_s", None),
            ("POST → 202, s", "accept_s", "≤ 1"), ("POST → all written, s", "expanded_s", None),
            ("POST → last send, s", "done_s", None), ("sends/s", "sends_per_s", None),
            ("bot CPU per send, ms", "cpu_ms_per_send", "≤ 0.25"), ("idle RSS, MB", "idle_rss_mb", None),
            ("peak RSS, MB", "peak_rss_mb", "≤ idle + 100"),
            ("outbox bytes per recipient", "db_bytes_per_recipient", "≤ 300"),
            ("  live (after VACUUM FULL)", "db_live_bytes_per_recipient", None),
            ("busy turns answered", "busy_turns", None), ("busy turn p50, ms", "busy_turn_p50_ms", None),
            ("busy turn p99, ms", "busy_turn_p99_ms", "≤ 250"), ("busy turn max, ms", "busy_turn_max_ms", "≤ 1000"),
            ("  slowest, s after the POST", "busy_turn_max_at_s", None),
            ("lost", "lost", "0"), ("duplicates", "duplicates", "0"),
            ("GET /metrics every, s", "scrape_every_s", None), ("scrapes", "scrapes", None),
            ("slowest scrape, ms", "scrape_max_ms", None),
            ("report (CSV) rows", "report_rows", None), ("report, s", "report_s", None),
            ("report rows/s", "report_rows_per_s", None), ("report size, MB", "report_mb", None),
            ("peak RSS while streaming, MB", "report_peak_rss_mb", "≤ idle + 100"),
            ("RSS growth while streaming, MB", "report_rss_growth_mb", "≈ 0")]
    columns = [r for r in (small, large) if r is not None]
    print(f"one notify to everyone on {large['engine']}, {os.cpu_count()} cores, load average "
          f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':<30}" + "".join(f"{'N=' + str(r['recipients']):>14}" for r in columns) + f"{'target':>16}")
    for label, key, target in rows:
        cells = "".join(f"{'-' if r.get(key) is None else r[key]!s:>14}" for r in columns)
        print(f"{label:<30}{cells}{target or '':>16}")
        if key == "db_live_bytes_per_recipient":  # the raw bytes by relation: the table, then its indexes by size
            for name in large["db_bytes_by_relation"]:
                cells = "".join(f"{r['db_bytes_by_relation'].get(name, '-')!s:>14}" for r in columns)
                print(f"{'  raw: ' + name:<30}{cells}")
    growth = figures["rss_growth_mb_small_to_large"]
    cell = "-" if growth is None else str(growth)
    print(f"{'peak RSS growth small→large, MB':<30}{'':>14}{cell:>14}{'≤ 30 (100k→1M)':>16}")
    keys = ["recipients", "engine", "accept_s", "expanded_s", "done_s", "sends_per_s", "cpu_ms_per_send",
            "peak_rss_mb", "idle_rss_mb", "rss_growth_mb_small_to_large", "db_bytes_per_recipient",
            "db_live_bytes_per_recipient", "busy_turn_p99_ms", "busy_turn_max_ms", "lost", "duplicates",
            "busy_turn_p50_ms", "busy_turns", "seed_s", "small_recipients", "small_peak_rss_mb", "report_rows",
            "report_s", "report_rows_per_s", "report_mb", "report_peak_rss_mb", "report_rss_growth_mb",
            "scrape_every_s", "scrapes", "scrape_max_ms", "db_bytes_by_relation"]
    return {k: figures.get(k) for k in keys}


async def drive(args: argparse.Namespace) -> Json:
    with tempfile.TemporaryDirectory(prefix="bench-broadcast-") as tmp:
        workdir = Path(args.workdir or tmp)  # --workdir: keep the processes' logs there
        databases = Databases(workdir, args.postgres_url)
        try:
            small_n = args.recipients // 10 if args.small is None else args.small
            small = (await run_round(workdir, databases, args.engine, small_n, args.tenants, args.scrape_every)
                     if small_n else None)
            large = await run_round(workdir, databases, args.engine, args.recipients, args.tenants, args.scrape_every)
        finally:
            databases.close()
    return report(small, large)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("driver", "double"), default="driver")
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--small", type=int, default=None, help="recipients of the comparison round (default N/10)")
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep the databases and logs here")
    parser.add_argument("--scrape-every", type=float, default=15.0,
                        help="GET /metrics every this many seconds during the broadcast, as Prometheus (0: never)")
    args = parser.parse_args()
    if args.role == "double":
        serve_double(args)
        return
    if args.recipients < args.tenants:
        parser.error("--recipients must be at least --tenants")
    print(json.dumps(asyncio.run(drive(args))))


if __name__ == "__main__":
    main()
