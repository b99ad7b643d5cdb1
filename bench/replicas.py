"""Several replicas on one PostgreSQL: one message to each of N conversations in several tenants, at Teams' limits.

    python bench/replicas.py [--tenants 3] [--per-tenant 2000] [--tenant-rps 50] [--lease-seconds 20]
                             [--postgres-url postgresql://user@host/db]

Three runs, each on a fresh database and a fresh connector double (its own process) enforcing Teams' windows
and `--tenant-rps` requests/s per tenant:
  1 replica    `main.py` alone; POST /api/notify to all.
  3 replicas   three `main.py` on the same DATABASE_URL (different PORT, REPLICA_ID); the POST goes to one;
               the replicas share the tenants (each tenant sent for by one replica at a time).
  3, one killed  as above; when half the messages are accepted, the replica sending for the most tenants
               is killed with SIGKILL. Take-over: from the kill to the next message the double accepts for
               a tenant the dead replica was sending for. Duplicates: conversations that got it twice
               (bounded by what the dead replica had in flight or had sent but not yet recorded).
Time: from the POST to the last message the double accepted. Bound: 1.05 x per-tenant / tenant-rps (the
tenants are served in parallel, each at its full budget). 429s: answered by the double. Lost: seeded
conversations with no accepted message.

PostgreSQL: `--postgres-url`'s server, or a throwaway server from the machine's binaries (tests/pg_server.py).
This process only drives and observes; the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, Databases, free_port, spawn, stop, wait_http

sys.path.insert(0, str(ROOT))
from tests.connector_double import ConnectorDouble, RecordedRequest, serve
from tests.outbox_seed import Conversation, conversation_ids, seed_references

NOTIFY_TOKEN = "bench-replicas-token"
TEXT = "Replicas benchmark: hello"
POLL_S = 0.1
Json = dict[str, Any]


# ---- the connector double, as its own process (--role double) ------------------------------------------


class CountingDouble(ConnectorDouble):
    """The connector double seeded with the conversations, counting accepted messages per conversation and
    remembering when each tenant's messages were accepted: GET /_bench/delivery[?tenants=a,b&after=T]."""

    def __init__(self, conversations: Sequence[Conversation], **options: Any) -> None:
        super().__init__(**options)
        self.tenant_of = dict(conversations)
        for conversation_id, tenant_id in conversations:
            self.add_conversation(conversation_id, tenant_id)
        self.delivered: Counter[str] = Counter()
        self.accepted_at: dict[str, list[float]] = defaultdict(list)  # tenant -> monotonic times

    def _op_send(self, record: RecordedRequest, info: Any) -> tuple[int, Json]:
        answer = super()._op_send(record, info)
        conversation_id = record.conversation_id or ""
        self.delivered[conversation_id] += 1
        self.accepted_at[self.tenant_of.get(conversation_id, "")].append(time.monotonic())  # comparable across
        return answer  # processes on Linux (CLOCK_MONOTONIC)

    _op_reply = _op_send

    def delivery(self, tenants: Sequence[str], after: float) -> Json:
        reached = sum(1 for c in self.tenant_of if self.delivered[c])
        times = [t for tenant in self.accepted_at.values() for t in tenant[-1:]]
        firsts = [t for tenant in self.accepted_at.values() for t in tenant[:1]]
        resumed = [t for tenant in tenants for t in self.accepted_at.get(tenant, []) if t > after]
        return {
            "accepted": sum(self.delivered.values()),
            "reached": reached,
            "lost": len(self.tenant_of) - reached,
            "duplicated": sum(1 for c in self.tenant_of if self.delivered[c] > 1),
            "last_accepted_at": max(times, default=None),
            "first_accepted_at": min(firsts, default=None),
            "first_after": min(resumed, default=None),
            "throttled": self.statuses.get(429, 0),
        }

    def make_app(self) -> web.Application:
        app = super().make_app()

        async def delivery(request: web.Request) -> web.Response:
            tenants = [t for t in request.query.get("tenants", "").split(",") if t]
            return web.json_response(self.delivery(tenants, float(request.query.get("after", "inf"))))

        app.router.add_get("/_bench/delivery", delivery)
        return app


def serve_double(args: argparse.Namespace) -> None:
    double = CountingDouble(conversation_ids(args.tenants, args.per_tenant), throttling=True,
                            tenant_rps=args.tenant_rps, max_records=1000)
    asyncio.run(serve(double, "127.0.0.1", args.port))


# ---- the driver --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the double saw in one run."""

    label: str
    replicas: int
    seconds: float | None = None
    first_s: float | None = None
    throttled: int = 0
    lost: int = 0
    duplicated: int = 0
    accepted: int = 0
    takeover_s: float | None = None
    victim_tenants: list[str] = field(default_factory=list)
    owners: dict[str, list[str]] = field(default_factory=dict)


async def tenants_of(session: aiohttp.ClientSession, bot_url: str) -> list[str]:
    """The tenants a replica sends for (from its /healthz details)."""
    return list((await get_json(session, bot_url + "healthz?detail=1"))["replica"]["tenants"])


async def get_json(session: aiohttp.ClientSession, url: str) -> Json:
    async with session.get(url) as response:
        response.raise_for_status()
        result: Json = await response.json()
        return result


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(POLL_S)


async def one_run(args: argparse.Namespace, databases: Databases, workdir: Path, label: str, replicas: int,
                  kill_at_midpoint: bool = False) -> Run:
    conversations = conversation_ids(args.tenants, args.per_tenant)
    total = len(conversations)
    url = databases.url("postgresql", label.replace(" ", "_").replace(",", ""))
    if url is None:
        raise SystemExit(f"no PostgreSQL: {databases.missing}")
    port = free_port()
    double = spawn(["bench/replicas.py", "--role", "double", "--port", str(port), "--tenants", str(args.tenants),
                    "--per-tenant", str(args.per_tenant), "--tenant-rps", str(args.tenant_rps)],
                   log=workdir / f"{label}-double.log")
    double_url = f"http://127.0.0.1:{port}/"
    bots: list[tuple[subprocess.Popen[bytes], str]] = []
    run = Run(label, replicas)
    try:
        await wait_http(double_url + "healthz")
        await seed_references(url, double_url, conversations)
        for n in range(replicas):
            bot_port = free_port()
            bots.append((spawn(["main.py"], env={
                "HOST": "127.0.0.1", "PORT": str(bot_port), "DATABASE_URL": url, "REPLICA_ID": f"replica-{n}",
                "NOTIFY_TOKEN": NOTIFY_TOKEN, "TEAMS_TENANT_RPS": str(args.tenant_rps), "LOG_LEVEL": "WARNING",
                "LEASE_SECONDS": str(args.lease_seconds),
                "MicrosoftAppId": "", "MicrosoftAppPassword": "", "MicrosoftAppTenantId": "",
            }, log=workdir / f"{label}-replica-{n}.log"), f"http://127.0.0.1:{bot_port}/"))
        async with aiohttp.ClientSession() as session:
            for _, bot_url in bots:
                await wait_http(bot_url + "healthz")

            async def all_see_each_other() -> bool:
                lives = [len((await get_json(session, b + "healthz?detail=1"))["replica"]["live"]) for _, b in bots]
                return all(live == replicas for live in lives)

            await until(all_see_each_other, 60, "replicas seeing each other")
            started_at = time.monotonic()
            async with session.post(bots[0][1] + "api/notify", json={"to": {"all": True}, "text": TEXT},
                                    headers={"Authorization": f"Bearer {NOTIFY_TOKEN}"}) as response:
                body = await response.json()
                if response.status != 202 or body.get("queued") != total:
                    raise RuntimeError(f"POST /api/notify answered {response.status}: {str(body)[:300]}")
            delivery_url = double_url + "_bench/delivery"
            timeout = 2.5 * args.per_tenant / args.tenant_rps + 4 * args.lease_seconds + 30
            killed_at = None
            if kill_at_midpoint:
                async def half() -> bool:
                    return int((await get_json(session, delivery_url))["accepted"]) >= total // 2

                await until(half, timeout, "half the messages")
                for (_, bot_url) in bots:
                    run.owners[bot_url] = await tenants_of(session, bot_url)
                victim = max(bots, key=lambda b: len(run.owners[b[1]]))
                run.victim_tenants = run.owners[victim[1]]
                victim[0].send_signal(signal.SIGKILL)
                victim[0].wait()
                killed_at = time.monotonic()
                delivery_url += f"?tenants={','.join(run.victim_tenants)}&after={killed_at}"

            async def all_reached() -> bool:
                return int((await get_json(session, delivery_url))["reached"]) >= total

            try:
                await until(all_reached, timeout, "every conversation reached")
            except TimeoutError as error:
                print(f"  {label}: {error}")
            await asyncio.sleep(1.0)  # late duplicates (a send in flight at the end) still count
            seen = await get_json(session, delivery_url)
            run.accepted, run.lost, run.duplicated = seen["accepted"], seen["lost"], seen["duplicated"]
            run.throttled = int(seen["throttled"])
            if seen["last_accepted_at"] is not None and run.lost == 0:
                run.seconds = seen["last_accepted_at"] - started_at
            if seen["first_accepted_at"] is not None:
                run.first_s = seen["first_accepted_at"] - started_at
            if killed_at is not None and seen["first_after"] is not None:
                run.takeover_s = seen["first_after"] - killed_at
            if not run.owners:
                for (_, bot_url) in bots:
                    run.owners[bot_url] = await tenants_of(session, bot_url)
        return run
    finally:
        for process, _ in bots:
            if process.poll() is None:
                stop(process)
        stop(double)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(args: argparse.Namespace, runs: list[Run]) -> Json:
    total = args.tenants * args.per_tenant
    bound_s = 1.05 * args.per_tenant / args.tenant_rps
    print(f"one message to each of {total} conversations in {args.tenants} tenants; the double enforces Teams' "
          f"windows and {args.tenant_rps} requests/s per tenant; PostgreSQL; LEASE_SECONDS={args.lease_seconds:g}")
    print(f"{'run':<32}{'seconds':>9}{'vs bound':>10}{'429s':>7}{'lost':>7}{'dup convs':>11}{'take-over s':>13}"
          f"{'1st send s':>12}  tenants per replica")
    for run in runs:
        ratio = run.seconds / bound_s * 1.05 if run.seconds else None
        spread = " ".join(str(len(t)) for t in run.owners.values())
        print(f"{run.label:<32}{fmt(run.seconds, '.1f'):>9}{fmt(ratio, '.3f'):>10}{run.throttled:>7}{run.lost:>7}"
              f"{run.duplicated:>11}{fmt(run.takeover_s, '.1f'):>13}{fmt(run.first_s, '.2f'):>12}  {spread}")
    print(f"{'bound: 1.05 x per-tenant / rps':<32}{bound_s:>9.1f}{1.05:>10.3f}{0:>7}{0:>7}{0:>11}"
          f"{'lease+' + format(args.lease_seconds / 3, '.0f'):>13}")
    by = {run.label: run for run in runs}

    def figures(prefix: str, run: Run | None) -> Json:
        if run is None:
            return {}
        return {f"{prefix}_s": None if run.seconds is None else round(run.seconds, 2),
                f"{prefix}_vs_bound": None if run.seconds is None else round(run.seconds / bound_s * 1.05, 3),
                f"{prefix}_429": run.throttled, f"{prefix}_lost": run.lost, f"{prefix}_dups": run.duplicated}

    result: Json = {"conversations": total, "tenants": args.tenants, "bound_s": round(bound_s, 2)}
    result |= figures("one", by.get("1 replica"))
    result |= figures("three", by.get("3 replicas"))
    killed = by.get("3, one killed")
    result |= figures("killed", killed)
    if killed is not None:
        result["takeover_s"] = None if killed.takeover_s is None else round(killed.takeover_s, 2)
        result["lease_s"] = args.lease_seconds
    return result


async def run(args: argparse.Namespace) -> Json:
    workdir = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    databases = Databases(workdir, args.postgres_url)
    runs: list[Run] = []
    try:
        runs.append(await one_run(args, databases, workdir, "1 replica", 1))
        runs.append(await one_run(args, databases, workdir, "3 replicas", 3))
        if not args.no_kill:
            runs.append(await one_run(args, databases, workdir, "3, one killed", 3, kill_at_midpoint=True))
    finally:
        databases.close()
    figures = report(args, runs)
    print(f"  processes' logs: {workdir}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--per-tenant", type=int, default=2000)
    parser.add_argument("--tenant-rps", type=int, default=50, help="per-tenant budget, double and bot")
    parser.add_argument("--lease-seconds", type=float, default=20.0, help="the replicas' LEASE_SECONDS")
    parser.add_argument("--no-kill", action="store_true", help="leave out the run with a replica killed")
    parser.add_argument("--postgres-url", "--database", dest="postgres_url",
                        help="a PostgreSQL server to create the benchmark databases on "
                             "(default: a throwaway server from the machine's binaries)")
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
