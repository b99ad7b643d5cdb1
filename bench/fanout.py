"""Proactive fan-out: ours (durable outbox + rate-limited worker) vs. the SDK samples' loop, and ours' ceiling.

    python bench/fanout.py [--conversations 2000] [--tenant-rps 50] [--tenants 20] [--per-tenant 500] [--metrics]
                           [--engines sqlite,postgresql] [--postgres-url postgresql://user@host/db]

(a) One message to each of N conversations in one tenant, against the connector double enforcing Teams'
    windows and `--tenant-rps` requests/s per tenant, a fresh double process per side:
    - the samples' approach: Microsoft's proactive sample, i.e. a stock `CloudAdapter` and a loop of
      `continue_conversation` over stored references, each exception caught and counted as lost;
    - ours: `main.py` with TEAMS_TENANT_RPS = `--tenant-rps` and POST /api/notify to all.
    Time: from the start of the loop / the POST to the last message the double accepted. 429s: answered by
    the double. Lost: seeded conversations with no accepted message at the end.
(b) Ceiling: ours against a non-throttling double, `--tenants` x `--per-tenant` conversations, limits set
    high: sends/s (messages / time from the POST to the last accepted) and the bot's CPU per send (the bot
    process's own user+system time, psutil, over the fan-out: the POST, policy, outbox writes and sends).
    A second row measures the delivery worker alone: the same rows written to the outbox before the bot
    starts, due a few seconds later, timed from that due time (no POST, no policy, no enqueue).
    Each row is run `--ceiling-rounds` times (fresh database and processes each time); medians are shown,
    against the targets (≤ 0.4 ms CPU per send, ≥ 2,500 sends/s), with the machine's load average.

`--metrics` prints the bot's GET /metrics of (a) (ours, on the first engine) at the end, before the JSON line.

Ours runs once per database engine (SQLite file; PostgreSQL on `--postgres-url`'s server or on a throwaway
server started from the machine's binaries), side by side in one run. Every party is its own process (the
doubles and the sample are this file with `--role`); this process only drives and observes (it polls the
double's counters every 100 ms). The last line is JSON (PostgreSQL figures prefixed `pg_`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, Databases, free_port, spawn, stop, wait_http

sys.path.insert(0, str(ROOT))
from state.clock import SystemClock
from state.db import connect
from state.outbox import OutboxItem, OutboxStore
from tests.connector_double import ConnectorDouble, RecordedRequest, serve
from tests.outbox_seed import BOT_ID, Conversation, conversation_ids, seed_references

NOTIFY_TOKEN = "bench-fanout-token"
PAYLOAD = {"type": "message", "text": "Fan-out benchmark: hello", "textFormat": "markdown"}
POLL_S = 0.1  # how often the driver reads the double's counters
PRELOAD_LEAD_S = 8.0  # worker-only run: rows fall due this long after they are queued (the bot starts meanwhile)
CEILING_TIMEOUT_S = 90.0
Json = dict[str, Any]


# ---- the connector double, as its own process (--role double) ------------------------------------------


class FanoutDouble(ConnectorDouble):
    """The connector double, seeded with the conversations (and their tenants, as Teams knows them), that
    also counts accepted messages per conversation: GET /_bench/delivery."""

    def __init__(self, conversations: Sequence[Conversation], **options: Any) -> None:
        super().__init__(**options)
        self.seeded = [conversation_id for conversation_id, _ in conversations]
        for conversation_id, tenant_id in conversations:
            self.add_conversation(conversation_id, tenant_id)
        self.delivered: Counter[str] = Counter()
        self.last_accepted_at: float | None = None

    def _op_send(self, record: RecordedRequest, info: Any) -> tuple[int, Json]:
        answer = super()._op_send(record, info)
        self.delivered[record.conversation_id or ""] += 1
        self.last_accepted_at = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes on Linux
        return answer

    _op_reply = _op_send

    def delivery(self) -> Json:
        reached = sum(1 for c in self.seeded if self.delivered[c])
        return {
            "accepted": sum(self.delivered.values()),
            "reached": reached,
            "lost": len(self.seeded) - reached,
            "duplicated": sum(1 for c in self.seeded if self.delivered[c] > 1),
            "last_accepted_at": self.last_accepted_at,
            "pid": os.getpid(),  # the driver checks it talks to its own double (other benchmarks share the machine)
        }

    def make_app(self) -> web.Application:
        app = super().make_app()

        async def delivery(request: web.Request) -> web.Response:
            return web.json_response(self.delivery())

        app.router.add_get("/_bench/delivery", delivery)
        return app


def serve_double(args: argparse.Namespace) -> None:
    double = FanoutDouble(
        conversation_ids(args.tenants, args.per_tenant),
        throttling=args.throttle,
        tenant_rps=args.tenant_rps,
        max_records=1000,  # only the counters matter here
    )
    asyncio.run(serve(double, "127.0.0.1", args.port))


# ---- the samples' approach (--role sample) -------------------------------------------------------------


async def sample_fanout(service_url: str, conversations: Sequence[Conversation]) -> Json:
    """Microsoft's proactive-messages sample: stored references, then `continue_conversation` in a loop."""
    from botbuilder.core import TurnContext
    from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
    from botbuilder.schema import Activity

    class DefaultConfig:
        APP_ID = ""
        APP_PASSWORD = ""
        APP_TYPE = "MultiTenant"
        APP_TENANTID = ""

    adapter = CloudAdapter(ConfigurationBotFrameworkAuthentication(DefaultConfig()))
    references = {}  # what the sample's on_conversation_update_activity stores
    for conversation_id, tenant_id in conversations:
        inbound = Activity().deserialize({
            "type": "conversationUpdate", "channelId": "msteams", "serviceUrl": service_url,
            "conversation": {"id": conversation_id, "conversationType": "personal", "tenantId": tenant_id},
            "from": {"id": f"29:user-{conversation_id}"}, "recipient": {"id": BOT_ID, "name": "Fanout Bot"},
            "channelData": {"tenant": {"id": tenant_id}},
        })
        references[conversation_id] = TurnContext.get_conversation_reference(inbound)

    errors: Counter[str] = Counter()
    started = time.monotonic()
    for reference in references.values():
        try:
            await adapter.continue_conversation(
                reference, lambda turn_context: turn_context.send_activity("proactive hello"), DefaultConfig.APP_ID
            )
        except Exception as exc:  # the sample has no retry: the message is lost
            errors[type(exc).__name__] += 1
    return {"seconds": time.monotonic() - started, "started_at": started, "errors": dict(errors)}


def run_sample(args: argparse.Namespace) -> None:
    result = asyncio.run(sample_fanout(args.service_url, conversation_ids(args.tenants, args.per_tenant)))
    print(json.dumps(result), flush=True)


# ---- the driver ----------------------------------------------------------------------------------------


@dataclass
class Side:
    """What one fan-out achieved, as the double saw it."""

    messages: int
    seconds: float | None  # None: not every conversation got its message before the timeout
    throttled: int  # 429s the double answered
    lost: int  # conversations without an accepted message at the end
    duplicated: int  # conversations with more than one
    sender_429s: int | None = None  # 429s the sender saw: the bot's counter / the loop's caught exceptions
    bot_cpu_s: float | None = None
    double_cpu_s: float | None = None
    post_s: float | None = None  # how long POST /api/notify took to answer 202
    metrics: str = ""  # the bot's GET /metrics at the end

    @property
    def rate(self) -> float | None:
        return self.messages / self.seconds if self.seconds else None


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def get_json(session: aiohttp.ClientSession, url: str) -> Json:
    async with session.get(url) as response:
        response.raise_for_status()
        result: Json = await response.json()
        return result


def start_double(
    workdir: Path, name: str, tenants: int, per_tenant: int, tenant_rps: int | None
) -> tuple[subprocess.Popen[bytes], str]:
    """A FanoutDouble process and its serviceUrl; `tenant_rps` None: no throttling."""
    port = free_port()
    args = ["bench/fanout.py", "--role", "double", "--port", str(port),
            "--tenants", str(tenants), "--per-tenant", str(per_tenant)]
    if tenant_rps is not None:
        args += ["--throttle", "--tenant-rps", str(tenant_rps)]
    return spawn(args, log=workdir / f"{name}-double.log"), f"http://127.0.0.1:{port}/"


async def check_own_double(double_url: str, pid: int) -> None:
    """Fail loudly if another process answers on our double's port (a port race with another benchmark)."""
    async with aiohttp.ClientSession() as session:
        answer = await get_json(session, double_url + "_bench/delivery")
    if answer.get("pid") != pid or answer.get("accepted"):
        raise RuntimeError(f"{double_url} is not this run's fresh double (pid {answer.get('pid')}, expected {pid})")


async def observe(session: aiohttp.ClientSession, double_url: str, messages: int, started_at: float) -> Side:
    """The double's view at the end: time to the last accepted message, 429s, lost and duplicated."""
    delivery = await get_json(session, double_url + "_bench/delivery")
    stats = await get_json(session, double_url + "_double/stats")
    last = delivery["last_accepted_at"]
    return Side(
        messages=messages,
        seconds=last - started_at if last is not None and delivery["lost"] == 0 else None,
        throttled=int(stats["statuses"].get("429", 0)),
        lost=int(delivery["lost"]),
        duplicated=int(delivery["duplicated"]),
    )


async def samples_side(workdir: Path, conversations: int, tenant_rps: int, timeout: float) -> Side:
    """The samples' loop in its own process against a fresh throttling double."""
    double, double_url = start_double(workdir, "sample", 1, conversations, tenant_rps)
    try:
        await wait_http(double_url + "healthz")
        await check_own_double(double_url, double.pid)
        sample = await asyncio.create_subprocess_exec(
            sys.executable, "bench/fanout.py", "--role", "sample", "--service-url", double_url,
            "--tenants", "1", "--per-tenant", str(conversations),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(sample.communicate(), timeout)
        except TimeoutError:
            sample.kill()
            await sample.wait()
            raise RuntimeError(f"the samples' loop did not finish within {timeout:.0f} s") from None
        lines = output.decode().strip().splitlines()
        if sample.returncode != 0 or not lines:
            raise RuntimeError(f"the samples' loop failed (exit {sample.returncode}):\n" + "\n".join(lines[-20:]))
        result = json.loads(lines[-1])
        async with aiohttp.ClientSession() as session:
            side = await observe(session, double_url, conversations, result["started_at"])
        side.seconds = result["seconds"]  # the whole loop: its last sends may have been refused
        side.sender_429s = sum(result["errors"].values())
        return side
    finally:
        stop(double)


async def queue_rows(database_url: str, conversations: Sequence[Conversation], not_before: float) -> None:
    """Put one pending outbox row per conversation straight into the database, due at `not_before`."""
    db = connect(database_url)
    await db.open()
    try:
        await OutboxStore(db, SystemClock()).enqueue([
            OutboxItem(payload=dict(PAYLOAD), conversation_id=c, tenant_id=t, not_before=not_before)
            for c, t in conversations
        ])
    finally:
        await db.close()


async def ours_side(
    workdir: Path, database_url: str, name: str, tenants: int, per_tenant: int, *, bot_rps: float,
    double_rps: int | None, timeout: float, preload: bool = False,
) -> Side:
    """`main.py` against a fresh double: seed references, POST /api/notify to all, watch the double.

    `preload`: skip the POST; the rows are queued in the database before the bot starts, due a few seconds
    later, so only the delivery worker is measured (from their due time).
    """
    conversations = conversation_ids(tenants, per_tenant)
    messages = len(conversations)
    double, double_url = start_double(workdir, name, tenants, per_tenant, double_rps)
    processes = [double]
    try:
        await seed_references(database_url, double_url, conversations)
        due = time.time() + PRELOAD_LEAD_S
        if preload:
            await queue_rows(database_url, conversations, due)
        port = free_port()
        processes.append(spawn(["main.py"], env={
            "HOST": "127.0.0.1", "PORT": str(port), "DATABASE_URL": database_url,
            "NOTIFY_TOKEN": NOTIFY_TOKEN, "TEAMS_TENANT_RPS": str(bot_rps), "LOG_LEVEL": "WARNING",
            "MicrosoftAppId": "", "MicrosoftAppPassword": "", "MicrosoftAppTenantId": "",
        }, log=workdir / f"{name}-bot.log"))
        bot_url = f"http://127.0.0.1:{port}/"
        await wait_http(double_url + "healthz")
        await wait_http(bot_url + "healthz")
        await check_own_double(double_url, double.pid)
        bot_process, double_process = psutil.Process(processes[1].pid), psutil.Process(double.pid)
        async with aiohttp.ClientSession() as session:
            bot_cpu, double_cpu = cpu_seconds(bot_process), cpu_seconds(double_process)
            post_s = None
            if preload:
                started_at = time.monotonic() + (due - time.time())
                if started_at < time.monotonic():
                    raise RuntimeError(f"the bot took over {PRELOAD_LEAD_S} s to start; raise PRELOAD_LEAD_S")
            else:
                started_at = time.monotonic()
                async with session.post(
                    bot_url + "api/notify", json={"to": {"all": True}, "text": PAYLOAD["text"]},
                    headers={"Authorization": f"Bearer {NOTIFY_TOKEN}"},
                ) as response:
                    body = await response.json()
                    if response.status != 202 or (body.get("queued") != messages and body.get("state") != "expanding"):
                        raise RuntimeError(f"POST /api/notify answered {response.status}: {str(body)[:300]}")
                post_s = time.monotonic() - started_at
            while time.monotonic() - started_at < timeout:
                if (await get_json(session, double_url + "_bench/delivery"))["reached"] >= messages:
                    break
                await asyncio.sleep(POLL_S)
            bot_cpu, double_cpu = cpu_seconds(bot_process) - bot_cpu, cpu_seconds(double_process) - double_cpu
            side = await observe(session, double_url, messages, started_at)
            health = await get_json(session, bot_url + "healthz?detail=1")
            async with session.get(bot_url + "metrics") as response:
                scrape = await response.text()
        side.metrics = scrape
        side.bot_cpu_s, side.double_cpu_s, side.post_s = bot_cpu, double_cpu, post_s
        side.sender_429s = int(health["delivery"]["throttled"])
        return side
    finally:
        for process in reversed(processes):
            stop(process)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@dataclass
class EngineRun:
    """Ours on one database engine: (a) at Teams' limits, (b) the ceiling, and the worker alone."""

    engine: str
    ours: Side
    ceiling: Side  # the median round (by sends/s) of each (b) row
    worker: Side
    ceiling_rounds: list[Side] = field(default_factory=list)
    worker_rounds: list[Side] = field(default_factory=list)


LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


TARGET_CPU_MS = 0.4
TARGET_SENDS_S = 2500


def cpu_ms(side: Side) -> float | None:
    return side.bot_cpu_s / side.messages * 1000 if side.bot_cpu_s is not None else None


def median_side(sides: list[Side]) -> Side:
    """The round with the median sends/s (a round that did not finish counts as the slowest)."""
    ordered = sorted(sides, key=lambda side: side.rate or 0.0)
    return ordered[len(ordered) // 2]


def report(args: argparse.Namespace, sample: Side, runs: list[EngineRun],
           load: tuple[tuple[float, ...], tuple[float, ...]]) -> Json:
    """Print the table; return the JSON figures."""
    n, rps = args.conversations, args.tenant_rps
    bound_s = 1.05 * n / rps
    print(f"(a) one message to each of {n} conversations in one tenant; the double enforces Teams' windows "
          f"and {rps} requests/s per tenant")
    print(f"{'approach':<44}{'seconds':>9}{'429s':>7}{'lost':>7}{'dup convs':>11}{'bot CPU s':>11}")
    rows = [("samples: continue_conversation loop", sample)]
    rows += [(f"ours on {LABELS[r.engine]}: outbox + DeliveryWorker", r.ours) for r in runs]
    for label, side in rows:
        print(f"{label:<44}{fmt(side.seconds, '.1f'):>9}{side.throttled:>7}{side.lost:>7}{side.duplicated:>11}"
              f"{fmt(side.bot_cpu_s, '.1f'):>11}")
    print(f"{'target for ours: 1.05 x N / ' + str(rps):<44}{bound_s:>9.1f}{0:>7}{0:>7}")
    print(f"  the samples' loop caught {sample.sender_429s} exceptions; "
          + "; ".join(f"ours on {LABELS[r.engine]} retried {r.ours.sender_429s} 429s, POST answered in "
                      f"{fmt(r.ours.post_s, '.1f')} s" for r in runs))
    print(f"(b) ceiling: {args.tenants} tenants x {args.per_tenant} conversations, non-throttling double, "
          f"TEAMS_TENANT_RPS={args.ceiling_rps:g}; median of {args.ceiling_rounds} round(s) "
          f"(each round's sends/s and CPU in brackets)")
    print(f"{'measured from':<44}{'seconds':>9}{'sends/s':>9}{'lost':>6}{'bot CPU s':>11}{'CPU ms/send':>13}"
          f"{'double CPU s':>14}  rounds: sends/s, CPU ms/send")
    for r in runs:
        for label, side, rounds in ((f"{LABELS[r.engine]}: POST /api/notify", r.ceiling, r.ceiling_rounds),
                                    (f"{LABELS[r.engine]}: rows due (worker only)", r.worker, r.worker_rounds)):
            every = ", ".join(f"{fmt(x.rate, '.0f')}/{fmt(cpu_ms(x), '.3f')}" for x in rounds)
            print(f"{label:<44}{fmt(side.seconds, '.2f'):>9}{fmt(side.rate, '.0f'):>9}{side.lost:>6}"
                  f"{fmt(side.bot_cpu_s, '.2f'):>11}{fmt(cpu_ms(side), '.3f'):>13}{fmt(side.double_cpu_s, '.2f'):>14}"
                  f"  [{every}]")
    print(f"{'targets':<44}{'':>9}{TARGET_SENDS_S:>9}{0:>6}{'':>11}{TARGET_CPU_MS:>13.3f}")
    print(f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load[0])}, "
          f"after {'/'.join(f'{x:.2f}' for x in load[1])} on {os.cpu_count()} cores")

    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    figures: Json = {"bound_s": round(bound_s, 2), "sample_s": rounded(sample.seconds, 2),
                     "sample_429": sample.throttled, "sample_lost": sample.lost,
                     "load_before": [round(x, 2) for x in load[0]], "load_after": [round(x, 2) for x in load[1]],
                     "cores": os.cpu_count(), "ceiling_rounds": args.ceiling_rounds}
    for r in runs:
        prefix = "" if r.engine == "sqlite" else "pg_"
        figures.update({
            f"{prefix}ours_s": rounded(r.ours.seconds, 2),
            f"{prefix}ours_vs_bound": rounded(r.ours.seconds / bound_s * 1.05 if r.ours.seconds else None, 3),
            f"{prefix}ours_429": r.ours.throttled,
            f"{prefix}ours_lost": r.ours.lost,
            f"{prefix}ceiling_sends_s": rounded(r.ceiling.rate, 1),
            f"{prefix}worker_sends_s": rounded(r.worker.rate, 1),
            f"{prefix}cpu_s_per_1000": rounded(cpu_ms(r.ceiling), 3),
            f"{prefix}cpu_ms_per_send": rounded(cpu_ms(r.ceiling), 3),
            f"{prefix}worker_cpu_ms_per_send": rounded(cpu_ms(r.worker), 3),
        })
    return figures


async def run(args: argparse.Namespace) -> Json:
    workdir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    databases = Databases(workdir, args.postgres_url)
    load_before = os.getloadavg()
    n, rps = args.conversations, args.tenant_rps
    try:
        sample = await samples_side(workdir, n, rps, timeout=args.sample_timeout)
        runs = []
        for engine in args.engines.split(","):
            url = databases.url(engine, "ours")
            if url is None:
                print(f"  skipping {engine}: {databases.missing}")
                continue
            ours = await ours_side(workdir, url, f"ours-{engine}", 1, n, bot_rps=rps, double_rps=rps,
                                   timeout=2.1 * n / rps + 10)
            ceilings, workers = [], []
            for round_ in range(args.ceiling_rounds):
                ceilings.append(await ours_side(
                    workdir, str(databases.url(engine, f"ceiling{round_}")), f"ceiling{round_}-{engine}", args.tenants,
                    args.per_tenant, bot_rps=args.ceiling_rps, double_rps=None, timeout=CEILING_TIMEOUT_S))
                workers.append(await ours_side(
                    workdir, str(databases.url(engine, f"worker{round_}")), f"worker{round_}-{engine}", args.tenants,
                    args.per_tenant, bot_rps=args.ceiling_rps, double_rps=None, timeout=CEILING_TIMEOUT_S,
                    preload=True))
            runs.append(EngineRun(engine, ours, median_side(ceilings), median_side(workers), ceilings, workers))
        figures = report(args, sample, runs, (load_before, os.getloadavg()))
    finally:
        databases.close()
    print(f"  processes' logs: {workdir}")
    if args.metrics and runs:
        print(f"GET /metrics of (a) ours on {LABELS[runs[0].engine]}, at the end (histogram buckets left out):")
        print("\n".join(line for line in runs[0].ours.metrics.splitlines()
                        if line and not line.startswith("#") and "_bucket{" not in line))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000, help="(a): conversations in the one tenant")
    parser.add_argument("--tenant-rps", type=int, default=50, help="(a): per-tenant budget, double and bot")
    parser.add_argument("--tenants", type=int, default=20, help="(b): tenants")
    parser.add_argument("--per-tenant", type=int, default=500, help="(b): conversations per tenant")
    parser.add_argument("--ceiling-rps", type=float, default=100_000, help="(b): TEAMS_TENANT_RPS")
    parser.add_argument("--ceiling-rounds", type=int, default=3, help="(b): rounds per row (median shown)")
    parser.add_argument("--sample-timeout", type=float, default=120, help="(a): give up on the samples' loop")
    parser.add_argument("--engines", default="sqlite,postgresql", help="database engines to run ours on")
    parser.add_argument("--postgres-url", "--database", dest="postgres_url",
                        help="a PostgreSQL server to create the benchmark databases on "
                             "(default: a throwaway server from the machine's binaries)")
    parser.add_argument("--metrics", action="store_true", help="print the bot's /metrics of (a) at the end")
    parser.add_argument("--role", choices=("bench", "double", "sample"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--throttle", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--service-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "double":
        serve_double(args)
    elif args.role == "sample":
        run_sample(args)
    else:
        print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
