"""Turn cost: ours vs. the echo bots of the SDKs people would pick, each against the connector double, in one run.

    python bench/turns.py [--turns 2000] [--concurrency 50] [--rounds 3] [--stock-turns 500]
                          [--postgres-url postgresql://…] [--no-agents-sdk]

Each bot runs in its own process, the connector double in another, and this process drives the load.
A turn is one POST /api/messages carrying a message; its latency ends when the bot has replied to the
connector and answered the POST. Columns:

- Microsoft 365 Agents SDK 1.9 echo bot (microsoft-agents-hosting-aiohttp, its quickstart in anonymous mode),
  installed by this script in its own virtualenv under the user's cache directory (once; `--no-agents-sdk`
  or no package index: the column is skipped, saying why);
- the stock botbuilder 4.17 echo bot (CloudAdapter; slow, so it gets `--stock-turns`);
- ours, doing its full work (conversation reference, engagement and dialog state read and saved every turn,
  a card, replies within Teams' limits through the delivery worker's send queue): on SQLite (the default
  `synchronous=FULL`, and `?synchronous=normal` for comparison), and on PostgreSQL (`--postgres-url`'s
  server, or a throwaway server from the machine's binaries).

Load: `CONVERSATIONS` conversations in `TENANTS` tenants, turn n in conversation n mod 500, so no conversation
or tenant goes past Teams' limits (which ours enforces on its replies with the default TEAMS_TENANT_RPS=50;
the double does not throttle). Every bot first sees every conversation once (warm-up).
Bot CPU per turn: the bot process's own user+system CPU time (psutil) over the measured turns.
Rounds alternate the bots so drift on the (shared) machine hits all alike; medians over the rounds are shown,
with the load average before and after. The last line is JSON with the figures.
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
import venv
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Databases, free_port, median, percentile, spawn, stop, wait_http

LATENCY_CONCURRENCY = 10
CONVERSATIONS = 500
TENANTS = 20
AGENTS_SDK = ("microsoft-agents-hosting-aiohttp~=1.9.0", "microsoft-agents-authentication-msal~=1.9.0")

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

# The Agents SDK's Python quickstart (AgentApplication + MsalConnectionManager from the environment), in
# anonymous mode: no client id, ANONYMOUS_ALLOWED=true (see `agents_env`).
AGENTS_ECHO = """
import os
import sys
from aiohttp.web import Application, Request, Response, run_app
from microsoft_agents.activity import load_configuration_from_env
from microsoft_agents.authentication.msal import MsalConnectionManager
from microsoft_agents.hosting.aiohttp import CloudAdapter, jwt_authorization_middleware, start_agent_process
from microsoft_agents.hosting.core import AgentApplication, Authorization, MemoryStorage, TurnContext, TurnState

CONFIG = load_configuration_from_env(os.environ)
STORAGE = MemoryStorage()
CONNECTION_MANAGER = MsalConnectionManager(**CONFIG)
ADAPTER = CloudAdapter(connection_manager=CONNECTION_MANAGER)
AUTHORIZATION = Authorization(STORAGE, CONNECTION_MANAGER, **CONFIG)
AGENT_APP = AgentApplication[TurnState](storage=STORAGE, adapter=ADAPTER, authorization=AUTHORIZATION, **CONFIG)


@AGENT_APP.activity("message")
async def on_message(context: TurnContext, _state: TurnState) -> None:
    await context.send_activity(f"you said: {context.activity.text}")


async def messages(req: Request) -> Response:
    return await start_agent_process(req, AGENT_APP, ADAPTER)


async def healthz(req: Request) -> Response:
    return Response(text="ok")


APP = Application(middlewares=[jwt_authorization_middleware])
APP.router.add_post("/api/messages", messages)
APP.router.add_get("/healthz", healthz)
APP["agent_configuration"] = CONNECTION_MANAGER.get_default_connection_configuration()
run_app(APP, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def agents_env() -> dict[str, str]:
    return {"CONNECTIONS__SERVICE_CONNECTION__SETTINGS__CLIENTID": "",
            "CONNECTIONS__SERVICE_CONNECTION__SETTINGS__ANONYMOUS_ALLOWED": "true"}


def agents_python() -> tuple[str | None, str]:
    """The Agents SDK's interpreter (its virtualenv, created and filled once under the cache dir), or why not."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "teams-proactive-bot"
    home = cache / "agents-sdk-venv"
    python = home / "bin" / "python"
    marker = home / "installed.txt"
    wanted = "\n".join(AGENTS_SDK)
    if marker.exists() and marker.read_text() == wanted and python.exists():
        return str(python), ""
    print(f"installing the Agents SDK ({', '.join(AGENTS_SDK)}) into {home} ...", flush=True)
    venv.create(home, with_pip=True, clear=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           *AGENTS_SDK], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return None, f"pip install failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    marker.write_text(wanted)
    return str(python), ""


def activity(service_url: str, n: int, text: str = "help") -> dict[str, object]:
    """Turn n: conversation n mod CONVERSATIONS, in tenant (conversation mod TENANTS)."""
    c = n % CONVERSATIONS
    tenant = f"t{c % TENANTS}"
    return {
        "type": "message",
        "id": f"m{n}",
        "text": text,
        "channelId": "msteams",
        "serviceUrl": service_url,
        "conversation": {"id": f"bench-conv-{c}", "conversationType": "personal", "tenantId": tenant},
        "from": {"id": f"29:user-{c}", "name": f"User {c}", "aadObjectId": f"aad-{c}"},
        "recipient": {"id": "28:bot", "name": "Bot"},
        "channelData": {"tenant": {"id": tenant}},
    }


async def drive(url: str, service_url: str, turns: int, concurrency: int, first: int = 0
                ) -> tuple[float, list[float], int]:
    """Send turns first..first+turns-1 with `concurrency` workers; returns (seconds, latencies_ms, errors)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(first, first + turns))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            for n in counter:
                started = time.perf_counter()
                async with session.post(url, json=activity(service_url, n)) as response:
                    await response.read()
                    if response.status >= 300:
                        errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, errors


@dataclass
class Bot:
    name: str
    label: str
    port: int
    process: subprocess.Popen[bytes]
    turns: int  # measured turns per round
    next_turn: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/messages"

    def cpu_s(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)


async def measure(bot: Bot, service_url: str, turns: int, concurrency: int) -> dict[str, float]:
    cpu = bot.cpu_s()
    seconds, latencies, errors = await drive(bot.url, service_url, turns, concurrency, bot.next_turn)
    cpu = bot.cpu_s() - cpu
    bot.next_turn += turns
    if errors:
        raise RuntimeError(f"{bot.name}: {errors} of {turns} turns failed")
    return {"turns_s": turns / seconds, "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "cpu_ms": cpu / turns * 1000}


async def start_analyses(url: str, service_url: str, count: int) -> None:
    """`count` users each start a long analysis (in their own conversations)."""
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            body = activity(service_url, 0, text="analyze gadget")
            body["conversation"] = {"id": f"analysis-{i}", "conversationType": "personal", "tenantId": "t0"}
            body["from"] = {"id": f"29:analyst-{i}", "name": f"Analyst {i}"}
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status >= 300:
                    raise RuntimeError(f"starting analysis {i} failed: HTTP {response.status}")


def ours_env(port: int | str, database_url: str, **extra: str) -> dict[str, str]:
    return {"PORT": str(port), "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", "MicrosoftAppId": "",
            "MicrosoftAppPassword": "", **extra}


async def run(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-turns-"))
    databases = Databases(workdir, args.postgres_url)
    load_before = os.getloadavg()
    agents, agents_missing = agents_python() if args.agents_sdk else (None, "--no-agents-sdk")
    double_port = free_port()
    processes = [spawn(["tests/connector_double.py", "--port", str(double_port)], log=workdir / "double.log")]
    bots: list[Bot] = []

    def add(name: str, label: str, turns: int, argv: list[str], env: dict[str, str] | None = None,
            python: str | None = None) -> Bot:
        """Start a bot; "{port}" in `argv` and `env` values becomes its port."""
        port = free_port()
        process = spawn([a.format(port=port) for a in argv], log=workdir / f"{name}.log", python=python,
                        env={k: v.format(port=port) for k, v in (env or {}).items()})
        processes.append(process)
        bots.append(Bot(name, label, port, process, turns))
        return bots[-1]

    if agents is not None:
        (workdir / "agents_echo.py").write_text(AGENTS_ECHO)
        add("agents", "Agents SDK 1.9 echo", args.turns, [str(workdir / "agents_echo.py"), "{port}"],
            env=agents_env(), python=agents)
    else:
        print(f"Agents SDK column skipped: {agents_missing}")
    (workdir / "stock_echo.py").write_text(STOCK_ECHO)
    add("stock", "botbuilder 4.17 echo", args.stock_turns, [str(workdir / "stock_echo.py"), "{port}"])
    ours = add("ours", "ours, SQLite", args.turns, ["main.py"], ours_env("{port}", f"sqlite:///{workdir}/bot.sqlite3"))
    add("normal", "ours, SQLite sync=NORMAL", args.turns, ["main.py"],  # the old durability, for comparison
        ours_env("{port}", f"sqlite:///{workdir}/normal.sqlite3?synchronous=normal"))
    pg_url = databases.url("postgresql", "turns")
    if pg_url is not None:
        add("pg", "ours, PostgreSQL", args.turns, ["main.py"], ours_env("{port}", pg_url))
    else:
        print(f"PostgreSQL column skipped: {databases.missing}")
    busy_port = free_port()
    processes.append(spawn(["main.py"], env=ours_env(
        busy_port, f"sqlite:///{workdir}/busy.sqlite3", PRICE_SOURCE="demo", ANALYZE_SECONDS="600",
        PROGRESS_DELAYS="1,2,3,4,5"), log=workdir / "busy.log"))
    busy = Bot("busy", "ours, 100 analyses running", busy_port, processes[-1], args.turns // 2)
    service_url = f"http://127.0.0.1:{double_port}/"
    results: dict[str, list[dict[str, float]]] = {b.name: [] for b in [*bots, busy]} | {"quiet": []}
    try:
        await wait_http(service_url + "healthz")
        for bot in [*bots, busy]:
            await wait_http(f"http://127.0.0.1:{bot.port}/healthz", timeout=60)
        for bot in [*bots, busy]:  # every conversation once: connections, caches, stored state
            warm = min(bot.turns, CONVERSATIONS)
            await drive(bot.url, service_url, warm, args.concurrency)
            bot.next_turn = warm
        await start_analyses(busy.url, service_url, 100)
        for _ in range(args.rounds):
            for bot in bots:
                results[bot.name].append(await measure(bot, service_url, bot.turns, args.concurrency))
            # turn latency (not throughput) with long work going on: a lighter load, side by side
            results["quiet"].append(await measure(ours, service_url, args.turns // 2, LATENCY_CONCURRENCY))
            results["busy"].append(await measure(busy, service_url, args.turns // 2, LATENCY_CONCURRENCY))
    finally:
        for process in processes:
            stop(process)
        databases.close()
    load_after = os.getloadavg()

    def med(name: str, key: str) -> float:
        return median([r[key] for r in results[name]]) if results[name] else float("nan")

    print(f"message turns at concurrency {args.concurrency} ({args.turns} per round; botbuilder echo "
          f"{args.stock_turns}), {args.rounds} rounds, medians; {CONVERSATIONS} conversations in {TENANTS} tenants")
    print(f"load average (1/5/15 min) before {fmt_load(load_before)}, after {fmt_load(load_after)} "
          f"on {os.cpu_count()} cores")
    print(f"{'bot':<30}{'turns/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/turn':>13}")
    for bot in bots:
        print(f"{bot.label:<30}{med(bot.name, 'turns_s'):>9.0f}{med(bot.name, 'p50_ms'):>9.1f}"
              f"{med(bot.name, 'p99_ms'):>9.1f}{med(bot.name, 'cpu_ms'):>13.2f}")
    print(f"\nturn latency at concurrency {LATENCY_CONCURRENCY}, {args.turns // 2} turns")
    for name, label in (("quiet", "ours, nothing running"), ("busy", busy.label)):
        print(f"{label:<30}{med(name, 'turns_s'):>9.0f}{med(name, 'p50_ms'):>9.1f}{med(name, 'p99_ms'):>9.1f}"
              f"{med(name, 'cpu_ms'):>13.2f}")
    figures: dict[str, object] = {
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
        "cores": os.cpu_count(),
    }
    for bot in bots:
        figures[f"{bot.name}_turns_s"] = round(med(bot.name, "turns_s"), 1)
        figures[f"{bot.name}_p99_ms"] = round(med(bot.name, "p99_ms"), 1)
        figures[f"{bot.name}_cpu_ms"] = round(med(bot.name, "cpu_ms"), 2)
    if results.get("agents"):
        figures["ours_vs_agents_turns"] = round(med("ours", "turns_s") / med("agents", "turns_s"), 2)
        figures["ours_vs_agents_cpu"] = round(med("ours", "cpu_ms") / med("agents", "cpu_ms"), 2)
    figures["ours_vs_stock_turns"] = round(med("ours", "turns_s") / med("stock", "turns_s"), 2)
    figures["ours_p99_ms_100_analyses"] = round(med("busy", "p99_ms"), 1)
    figures["full_vs_normal_turns"] = round(med("ours", "turns_s") / med("normal", "turns_s"), 2)
    figures["full_vs_normal_p99"] = round(med("ours", "p99_ms") / med("normal", "p99_ms"), 2)
    if results.get("pg"):
        figures["pg_vs_sqlite"] = round(med("pg", "turns_s") / med("ours", "turns_s"), 2)
    return figures


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--stock-turns", type=int, default=500, help="turns per round for the botbuilder echo bot")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-agents-sdk", dest="agents_sdk", action="store_false",
                        help="skip the Agents SDK column (no package index)")
    parser.add_argument("--postgres-url", "--database", dest="postgres_url",
                        help="a PostgreSQL server to create the benchmark database on "
                             "(default: a throwaway server from the machine's binaries)")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
