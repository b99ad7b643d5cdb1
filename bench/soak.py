"""Soak: one bot process under mixed load for minutes, with Teams misbehaving and the database away twice.

    python bench/soak.py [--minutes 10] [--users 200] [--tenants 4] [--fault-rate 0.10] [--throttle-rate 0.02]
                         [--database sqlite|postgresql]

The bot is `main.py` on a SQLite file (the default deployment), against a connector double (its own process)
that enforces Teams' windows and, on top, answers a random `--fault-rate` of message calls with 502/503/504 or
holds them past the bot's timeout (then accepts them, as Teams may have), and `--throttle-rate` with 429.
The driver (this process) meanwhile:
  - has `--users` users in `--tenants` tenants install the bot (a welcome each), then each writes every ~20 s:
    mostly `pingN` (the bot's answer quotes it), sometimes help/list/status/settings, `watch` then `cancel`
    (a topic: notifications wait), `analyze gizmo` (acknowledged, progress, result later);
  - pushes a price for gadget and gizmo every 5 s (half the users watch gadget on any change: alerts);
  - broadcasts `broadcastK` to everyone through POST /api/notify every minute;
  - at 30 % and 70 % of the run takes the database away: SQLite (the default) is locked from another process for
    5 s (BEGIN EXCLUSIVE; the bot waits it out on its busy timeout), PostgreSQL (a throwaway server of its own,
    `--database postgresql`) is stopped for 15 s (immediate shutdown, a crash) and started again;
  - answers like Teams to a 503 with Retry-After (the bot's honest "not now" while its database is away): sends
    the same activity (or request) again after Retry-After, up to 30 times; those 503s are counted apart;
  - samples the bot's RSS and the database's size (file + WAL) every 10 s.
At the end the load stops, the outbox drains (up to 3 minutes), and the double's view is checked:
lost = pings with no answer + (broadcast, conversation) pairs never delivered + analyses with no result.
5xx = the bot's answers >= 500 to the driver other than 503 with Retry-After (those are `honest_503`).
RSS growth: from the 2-minute sample to the end.
The last line is JSON: minutes, database, turns, sends, lost, five_xx, honest_503, rss_mb_start, rss_mb_end,
rss_growth_pct, db_mb_end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, free_port, spawn, stop, wait_http

sys.path.insert(0, str(ROOT))
from tests.connector_double import FAULTS, ConnectorDouble, Fault, RecordedRequest, _Reject, serve
from tests.pg_server import PostgresServer

TOKEN = "bench-soak-token"
TAGS = re.compile(r"\b(ping\d+|broadcast\d+)\b")
SAMPLE_S = 10.0
DB_LOCK_S = 5.0
PG_OUTAGE_S = 15.0
RESENDS = 30  # how often the driver sends a request answered 503 + Retry-After again (as Teams re-sends)
Json = dict[str, Any]


# ---- the connector double, as its own process (--role double) ------------------------------------------


class SoakDouble(ConnectorDouble):
    """Teams' windows plus random faults on message calls; remembers which tagged texts reached which
    conversation and how many analysis results each got: GET /_soak/seen."""

    def __init__(self, fault_rate: float, throttle_rate: float, seed: int, **options: Any) -> None:
        super().__init__(**options)
        self.fault_rate, self.throttle_rate = fault_rate, throttle_rate
        self.rng = random.Random(seed)
        self.seen: dict[str, set[str]] = defaultdict(set)  # tag -> conversations
        self.results: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.accepted = 0

    async def _answer(self, record: RecordedRequest, bad_json: bool, info: Any) -> tuple[int, Any]:
        fault = self._random_fault(record)
        if fault is not None and fault.hold_seconds is not None:
            await self._hold(record, fault.hold_seconds)  # then answered normally: Teams may have taken it
        elif fault is not None:
            raise _Reject(fault.status, fault.code, fault.message, fault.retry_after)
        return await super()._answer(record, bad_json, info)

    def _random_fault(self, record: RecordedRequest) -> Fault | None:
        if record.op not in ("send", "reply", "update"):
            return None
        draw = self.rng.random()
        if draw < self.fault_rate:
            name = self.rng.choice(["bad_gateway", "service_unavailable", "gateway_timeout", "bad_gateway",
                                    "service_unavailable", "timeout"])
            self.injected[name] += 1
            return Fault(200, hold_seconds=25.0) if name == "timeout" else FAULTS[name]
        if draw < self.fault_rate + self.throttle_rate:
            self.injected["throttled"] += 1
            return FAULTS["throttled"]
        return None

    def _op_send(self, record: RecordedRequest, info: Any) -> tuple[int, Json]:
        answer = super()._op_send(record, info)
        self._saw(record)
        return answer

    def _op_reply(self, record: RecordedRequest, info: Any) -> tuple[int, Json]:
        answer = super()._op_reply(record, info)
        self._saw(record)
        return answer

    def _op_update(self, record: RecordedRequest, info: Any) -> tuple[int, Json]:
        answer = super()._op_update(record, info)
        self._saw(record)
        return answer

    def _saw(self, record: RecordedRequest) -> None:
        self.accepted += 1
        text = json.dumps(record.body)
        conversation = (record.conversation_id or "").split(";")[0]
        for tag in TAGS.findall(text):
            self.seen[tag].add(conversation)
        if "Analysis of gizmo is ready" in text:
            self.results[conversation] += 1

    def make_app(self) -> web.Application:
        app = super().make_app()

        async def seen(request: web.Request) -> web.Response:
            return web.json_response({"seen": {tag: sorted(c) for tag, c in self.seen.items()},
                                      "results": dict(self.results), "accepted": self.accepted,
                                      "injected": dict(self.injected), "statuses": dict(self.statuses)})

        app.router.add_get("/_soak/seen", seen)
        return app


def serve_double(args: argparse.Namespace) -> None:
    double = SoakDouble(args.fault_rate, args.throttle_rate, seed=7, throttling=True, max_records=2000,
                        max_hold=30.0)
    asyncio.run(serve(double, "127.0.0.1", args.port))


# ---- the driver --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    turns: int = 0
    five_xx: int = 0
    honest_503: int = 0  # 503 with Retry-After: the database was away; sent again
    other_errors: Counter[str] = field(default_factory=Counter)
    pings: dict[str, str] = field(default_factory=dict)  # tag -> conversation
    broadcasts: list[str] = field(default_factory=list)
    analyses: set[str] = field(default_factory=set)  # conversations that asked for one
    pushes: int = 0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (minute, rss MB, db MB)


class Driver:
    def __init__(self, args: argparse.Namespace, bot_url: str, double_url: str, db_path: Path, pid: int,
                 server: PostgresServer | None = None) -> None:
        self.args, self.bot_url, self.double_url, self.db_path = args, bot_url, double_url, db_path
        self.server = server
        self.process = psutil.Process(pid)
        self.tally = Tally()
        self.rng = random.Random(11)
        self.ids = itertools.count(1)
        self.started = time.monotonic()
        self.deadline = self.started + args.minutes * 60

    def activity(self, user: int, **fields: Any) -> Json:
        tenant = f"tenant-{user % self.args.tenants:02d}"
        return {
            "id": f"m{next(self.ids)}", "channelId": "msteams", "serviceUrl": self.double_url,
            "conversation": {"id": f"a:soak-u{user:04d}", "conversationType": "personal", "tenantId": tenant},
            "from": {"id": f"29:u{user:04d}", "name": f"User {user}"}, "recipient": {"id": "28:bot", "name": "Bot"},
            "channelData": {"tenant": {"id": tenant}}, **fields,
        }

    async def post(self, http: aiohttp.ClientSession, path: str, body: Json, auth: bool = False) -> int:
        """POST, and like Teams send it again after Retry-After while the answer is 503 with one."""
        headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
        for _ in range(RESENDS):
            try:
                async with http.post(self.bot_url + path, json=body, headers=headers) as response:
                    await response.read()
                    retry_after = response.headers.get("Retry-After")
                    if response.status == 503 and retry_after:
                        self.tally.honest_503 += 1
                        await asyncio.sleep(float(retry_after))
                        continue
                    if response.status >= 500:
                        self.tally.five_xx += 1
                        print(f"  {response.status} from {path} at {self.minute():.1f} min")
                    return response.status
            except (aiohttp.ClientError, TimeoutError) as error:
                self.tally.other_errors[type(error).__name__] += 1
                return 0
        self.tally.other_errors["still 503 after every re-send"] += 1
        return 503

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, but not past the end of the run."""
        await asyncio.sleep(max(0.0, min(seconds, self.deadline - time.monotonic())))

    def minute(self) -> float:
        return (time.monotonic() - self.started) / 60

    async def say(self, http: aiohttp.ClientSession, user: int, text: str) -> int:
        status = await self.post(http, "api/messages", self.activity(user, type="message", text=text))
        self.tally.turns += 1
        return status

    async def user(self, http: aiohttp.ClientSession, user: int) -> None:
        await self.post(http, "api/messages", self.activity(user, type="installationUpdate", action="add"))
        if user % 2 == 0:
            await self.say(http, user, "watch gadget any change")
        await self.pause(self.rng.uniform(0, 20))
        while time.monotonic() < self.deadline:
            draw = self.rng.random()
            if draw < 0.70:
                tag = f"ping{next(self.ids)}"
                if await self.say(http, user, tag) == 200:
                    self.tally.pings[tag] = f"a:soak-u{user:04d}"
            elif draw < 0.82:
                await self.say(http, user, self.rng.choice(["help", "list", "status", "settings"]))
            elif draw < 0.94:
                await self.say(http, user, "watch")  # mid-topic: notifications for this user wait ...
                await self.pause(self.rng.uniform(2, 8))
                await self.say(http, user, "cancel")  # ... and come when the topic ends
            elif await self.say(http, user, "analyze gizmo") == 200:
                self.tally.analyses.add(f"a:soak-u{user:04d}")
            await self.pause(self.rng.expovariate(1 / 20))

    async def prices(self, http: aiohttp.ClientSession) -> None:
        price = {"gadget": 50.0, "gizmo": 20.0}
        while time.monotonic() < self.deadline:
            for product in price:
                price[product] = round(max(1.0, price[product] * self.rng.uniform(0.97, 1.03)), 2)
                body = {"product": product, "price": price[product], "currency": "USD", "source": "Soak Store"}
                if await self.post(http, "api/prices", body, auth=True) < 300:
                    self.tally.pushes += 1
            await asyncio.sleep(5)

    async def broadcasts(self, http: aiohttp.ClientSession) -> None:
        for k in itertools.count(1):
            await self.pause(60)
            if time.monotonic() >= self.deadline:
                return
            tag = f"broadcast{k}"
            if await self.post(http, "api/notify", {"to": {"all": True}, "text": f"Soak {tag}"}, auth=True) == 202:
                self.tally.broadcasts.append(tag)

    async def database_faults(self) -> None:
        for at in (0.3, 0.7):
            await asyncio.sleep(max(0.0, self.started + at * self.args.minutes * 60 - time.monotonic()))
            if self.server is None:
                print(f"  locking the database for {DB_LOCK_S:g} s at {self.minute():.1f} min")
                await asyncio.to_thread(lock_database, self.db_path, DB_LOCK_S)
                continue
            print(f"  stopping PostgreSQL for {PG_OUTAGE_S:g} s at {self.minute():.1f} min")
            await asyncio.to_thread(self.server.halt)
            await asyncio.sleep(PG_OUTAGE_S)  # the outage: the load goes on meanwhile
            await asyncio.to_thread(self.server.resume)
            print(f"  PostgreSQL back at {self.minute():.1f} min")

    def db_mb(self) -> float:
        if self.server is not None:
            return sum(f.stat().st_size for f in self.server.data.rglob("*") if f.is_file()) / 1e6
        files = [self.db_path, self.db_path.with_name(self.db_path.name + "-wal")]
        return sum(f.stat().st_size for f in files if f.exists()) / 1e6

    async def sampler(self) -> None:
        while time.monotonic() < self.deadline + SAMPLE_S:
            rss = self.process.memory_info().rss / 1e6
            self.tally.samples.append((self.minute(), rss, self.db_mb()))
            await asyncio.sleep(SAMPLE_S)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=300)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
            for product, value in (("gadget", 50.0), ("gizmo", 20.0)):
                await self.post(http, "api/prices", {"product": product, "price": value, "currency": "USD",
                                                     "source": "Soak Store"}, auth=True)
            tasks = [asyncio.create_task(self.user(http, u)) for u in range(self.args.users)]
            tasks += [asyncio.create_task(c) for c in (self.prices(http), self.broadcasts(http),
                                                        self.database_faults(), self.sampler())]
            await asyncio.gather(*tasks)


def lock_database(path: Path, seconds: float) -> None:
    """Another process's write lock on the SQLite file (the bot's writes wait on its busy timeout)."""
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)  # a thread of the driver: the load goes on meanwhile
        connection.execute("ROLLBACK")
    finally:
        connection.close()


async def drain(bot_url: str, limit_s: float) -> Json:
    """Wait until no outbox row is pending or held (or `limit_s`); returns the last counts."""
    deadline = time.monotonic() + limit_s
    counts: Json = {}
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(bot_url + "healthz?detail=1") as response:
                counts = (await response.json()).get("outbox", {})
            if not counts.get("pending") and not counts.get("held"):
                break
            await asyncio.sleep(1)
    return counts


async def run(args: argparse.Namespace) -> Json:
    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    db_path = workdir / "soak.sqlite3"
    server: PostgresServer | None = None
    database_url = f"sqlite:///{db_path}"
    if args.database == "postgresql":
        server, missing = PostgresServer.find()
        if server is None:
            raise SystemExit(f"--database postgresql: {missing}")
        server.durable = True  # an immediate shutdown is a crash: what the bot acknowledged must survive it
        server.start()
        database_url = server.create_database("soak")
    double_port, bot_port = free_port(), free_port()
    double = spawn(["bench/soak.py", "--role", "double", "--port", str(double_port),
                    "--fault-rate", str(args.fault_rate), "--throttle-rate", str(args.throttle_rate)],
                   log=workdir / "double.log")
    double_url, bot_url = f"http://127.0.0.1:{double_port}/", f"http://127.0.0.1:{bot_port}/"
    bot = spawn(["main.py"], env={
        "HOST": "127.0.0.1", "PORT": str(bot_port), "DATABASE_URL": database_url,
        "NOTIFY_TOKEN": TOKEN, "PRICES_TOKEN": TOKEN, "PRICE_SOURCE": "none", "ANALYZE_SECONDS": "20",
        "LOG_LEVEL": "WARNING", "MAX_ANALYSES_PER_TENANT": "100000",  # 200 users of one tenant: every ask is counted

        "MicrosoftAppId": "", "MicrosoftAppPassword": "", "MicrosoftAppTenantId": "",
    }, log=workdir / "bot.log")
    try:
        await wait_http(double_url + "healthz")
        await wait_http(bot_url + "healthz")
        driver = Driver(args, bot_url, double_url, db_path, bot.pid, server)
        await driver.run()
        outbox = await drain(bot_url, 180)
        async with aiohttp.ClientSession() as http:
            async with http.get(double_url + "_soak/seen") as response:
                seen: Json = await response.json()
            async with http.get(bot_url + "healthz?detail=1") as response:
                health: Json = await response.json()
    finally:
        stop(bot)
        stop(double)
        if server is not None:
            server.stop()
    return report(args, driver, seen, outbox, health, workdir)


def report(args: argparse.Namespace, driver: Driver, seen: Json, outbox: Json, health: Json, workdir: Path) -> Json:
    tally = driver.tally
    delivered = {tag: set(c) for tag, c in seen["seen"].items()}
    lost_pings = [tag for tag, conversation in tally.pings.items() if conversation not in delivered.get(tag, ())]
    everyone = {f"a:soak-u{u:04d}" for u in range(args.users)}
    lost_broadcasts = sum(len(everyone - delivered.get(tag, set())) for tag in tally.broadcasts)
    lost_analyses = [c for c in tally.analyses if not seen["results"].get(c)]
    lost = len(lost_pings) + lost_broadcasts + len(lost_analyses)
    print(f"{'minute':>7}{'RSS MB':>9}{'DB MB':>8}")
    for minute, rss, db in tally.samples:
        print(f"{minute:>7.1f}{rss:>9.1f}{db:>8.2f}")
    after_two = [s for s in tally.samples if s[0] >= 2.0] or tally.samples
    rss_start, rss_end = after_two[0][1], tally.samples[-1][1]
    growth = (rss_end - rss_start) / rss_start * 100
    injected = seen["injected"]
    print(f"{args.minutes:g} min, {args.users} users in {args.tenants} tenants: {tally.turns} turns, "
          f"{len(tally.pings)} pings, {len(tally.broadcasts)} broadcasts, {tally.pushes} price pushes, "
          f"{len(tally.analyses)} conversations analysing")
    print(f"double: {seen['accepted']} messages accepted; injected {dict(injected)}; answers by status "
          f"{seen['statuses']}")
    print(f"bot: outbox at the end {outbox}; delivery counters {health.get('delivery', {})}")
    print(f"lost: {len(lost_pings)} pings, {lost_broadcasts} broadcast deliveries, {len(lost_analyses)} analyses"
          f" (target 0); 5xx answers: {tally.five_xx} (target 0); honest 503s (database away, sent again): "
          f"{tally.honest_503}; driver errors {dict(tally.other_errors)}")
    print(f"RSS {rss_start:.1f} MB at 2 min -> {rss_end:.1f} MB at the end ({growth:+.1f} %, target < 15 %); "
          f"database {tally.samples[-1][2]:.2f} MB")
    print(f"  logs: {workdir}")
    return {"minutes": args.minutes, "database": args.database, "turns": tally.turns, "sends": seen["accepted"],
            "lost": lost, "five_xx": tally.five_xx, "honest_503": tally.honest_503,
            "rss_mb_start": round(rss_start, 1), "rss_mb_end": round(rss_end, 1),
            "rss_growth_pct": round(growth, 1), "db_mb_end": round(tally.samples[-1][2], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--fault-rate", type=float, default=0.10, help="message calls answered 5xx or held")
    parser.add_argument("--throttle-rate", type=float, default=0.02, help="message calls answered 429")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="postgresql: a throwaway server, stopped for 15 s twice")
    parser.add_argument("--role", choices=("bench", "double"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "double":
        serve_double(args)
    else:
        print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
