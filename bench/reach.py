"""Reaching everyone: one notice to N people of one tenant the bot has never met, M of whom lack the app.

    python bench/reach.py [--people 2000] [--lacking 1000] [--database sqlite|postgresql] [--postgres-url URL]

`main.py` runs as its own process with PROACTIVE_INSTALL=true against, in this process: the Bot Connector
double over TLS enforcing Teams' windows (per conversation, and 50 requests/s per tenant for creates and sends
together) that answers a create for someone without the app with 403; the Graph double over TLS (real
client-credentials tokens from the identity double, checked for Graph's audience and the tenant) throttling
installs at 30/s per tenant; and Teams' installationUpdate sent to the bot after each install, as Teams does.

One POST /api/notify `{"to": {"users": [N AAD ids], "tenantId": …}}`; timed until every person has the notice.
The bound is what the limits allow at best: every Teams request the run needed at 50/s (creates, 403s
included, welcomes and notices), or every install at 30/s, whichever is longer. Lost: people without the
notice at the end. The table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, Databases, free_port, spawn, stop, wait_http

sys.path.insert(0, str(ROOT))
from tests.connector_double import ConnectorDouble
from tests.graph_double import GraphDouble
from tests.identity_double import IdentityDouble

APP_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
BOT = f"28:{APP_ID}"
SECRET = "bench-reach-secret"
TENANT = "0b7e5c1a-2d3f-4e5a-9b6c-7d8e9f0a1b2c"
CATALOG_ID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6"
NOTIFY_TOKEN = "bench-reach-token"
TEXT = "Reach benchmark: the office is closed on Friday"
TEAMS_RPS, INSTALLS_PER_S = 50, 30
TIMEOUT_S = 900.0


def person(n: int) -> str:
    return f"3a4b5c6d-7e8f-4a1b-9c2d-{n:012x}"


class TeamsEvents:
    """After each Graph install: the app is installed in the connector double, and Teams sends the bot the
    installationUpdate of the new personal chat (in the background, as Teams does)."""

    def __init__(self, identity: IdentityDouble, connector: ConnectorDouble, http: aiohttp.ClientSession) -> None:
        self.identity, self.connector, self.http = identity, connector, http
        self.bot_url = ""
        self.tasks: set[asyncio.Task[None]] = set()
        self.statuses: Counter[int] = Counter()

    async def installed(self, tenant: str, user: str, chat_id: str) -> None:
        conversation = self.connector.install(tenant, user, BOT)
        task = asyncio.create_task(self._event(conversation, user))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _event(self, conversation: str, user: str) -> None:
        activity = {"type": "installationUpdate", "action": "add", "id": f"install-{user}", "channelId": "msteams",
                    "serviceUrl": self.connector.url,
                    "conversation": {"id": conversation, "conversationType": "personal", "tenantId": TENANT},
                    "from": {"id": f"29:{user}", "aadObjectId": user}, "recipient": {"id": BOT},
                    "channelData": {"tenant": {"id": TENANT}}}
        token = self.identity.channel_token(issuer="https://api.botframework.com", audience=APP_ID,
                                            service_url=self.connector.url)
        try:
            async with self.http.post(f"{self.bot_url}/api/messages", json=activity,
                                      headers={"Authorization": f"Bearer {token}"}) as response:
                self.statuses[response.status] += 1
        except aiohttp.ClientError:
            self.statuses[0] += 1


def reached(connector: ConnectorDouble) -> tuple[Counter[str], Counter[str]]:
    """Accepted notices and welcomes per conversation."""
    notices: Counter[str] = Counter()
    welcomes: Counter[str] = Counter()
    for request in connector.requests:
        if request.op == "send" and request.status == 201:
            if request.body.get("text") == TEXT:
                notices[request.conversation_id or ""] += 1
            elif request.body.get("attachments"):
                welcomes[request.conversation_id or ""] += 1
    return notices, welcomes


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    databases = Databases(workdir, args.postgres_url)
    database_url = databases.url(args.database, "reach")
    if database_url is None:
        raise SystemExit(f"no PostgreSQL: {databases.missing}")
    people = [person(n) for n in range(args.people)]
    lacking = set(people[: args.lacking])
    async with IdentityDouble(workdir, clients={APP_ID: SECRET}) as identity, \
            GraphDouble(workdir, identity, installs_per_second=INSTALLS_PER_S) as graph, \
            aiohttp.ClientSession() as http:
        connector = ConnectorDouble(throttling=True, tenant_rps=TEAMS_RPS, max_records=None)
        await connector.start(ssl_context=identity.server_context())
        connector.require_install = True
        for user in people:
            if user not in lacking:
                connector.install(TENANT, user, BOT)
        graph.add_tenant(TENANT, people, catalog={APP_ID: CATALOG_ID})
        events = TeamsEvents(identity, connector, http)
        graph.on_install = events.installed
        port = free_port()
        bot = spawn(["main.py"], env={
            "HOST": "127.0.0.1", "PORT": str(port), "DATABASE_URL": database_url, "NOTIFY_TOKEN": NOTIFY_TOKEN,
            "MicrosoftAppId": APP_ID, "MicrosoftAppPassword": SECRET, "MicrosoftAppTenantId": "",
            "ToBotFromChannelOpenIdMetadataUrl": identity.metadata_url,
            "ToChannelFromBotLoginUrl": identity.login_url(), "SSL_CERT_FILE": identity.ca_file,
            "REQUESTS_CA_BUNDLE": graph.ca_file, "GRAPH_URL": graph.url, "PROACTIVE_INSTALL": "true",
            "TEAMS_SERVICE_URL": connector.url, "SERVICE_URL_HOSTS": "127.0.0.1",
            "TEAMS_TENANT_RPS": str(TEAMS_RPS), "LOG_LEVEL": "INFO", "LOG_FORMAT": "json",
        }, log=workdir / "bot.log")
        events.bot_url = f"http://127.0.0.1:{port}"
        try:
            await wait_http(f"{events.bot_url}/healthz")
            started = time.monotonic()
            async with http.post(f"{events.bot_url}/api/notify", headers={"Authorization": f"Bearer {NOTIFY_TOKEN}"},
                                 json={"to": {"users": people, "tenantId": TENANT}, "text": TEXT,
                                       "dedupKey": "reach-bench"}) as response:
                assert response.status == 202, await response.text()
                batch_id = (await response.json())["batchId"]
            elapsed = TIMEOUT_S
            while time.monotonic() - started < TIMEOUT_S:
                notices, _ = reached(connector)
                if len(notices) >= args.people:
                    elapsed = time.monotonic() - started
                    break
                await asyncio.sleep(0.2)  # the driver samples the double's record; it times nothing finer
            async with http.get(f"{events.bot_url}/api/notify/batches/{batch_id}",
                                headers={"Authorization": f"Bearer {NOTIFY_TOKEN}"}) as response:
                status = await response.json()
        finally:
            stop(bot)
            await asyncio.gather(*events.tasks, return_exceptions=True)
            await connector.stop()
            databases.close()
        notices, welcomes = reached(connector)
        creates = Counter(r.status for r in connector.requests if r.op == "create")
        sends = sum(1 for r in connector.requests if r.op == "send")
        teams_requests = sum(creates.values()) + sends
        installs = Counter(r.status for r in graph.requests if r.op == "install")
        bound = max(teams_requests / TEAMS_RPS, sum(installs.values()) / INSTALLS_PER_S)
        lacking_reached = sum(1 for r in connector.find("create", status=201) if r.body["members"][0]["id"] in lacking)
        return {
            "database": args.database, "people": args.people, "lacking": args.lacking,
            "seconds": round(elapsed, 1), "bound_s": round(bound, 1), "ratio": round(elapsed / bound, 2),
            "teams_requests": teams_requests, "creates_201": creates.get(201, 0), "creates_403": creates.get(403, 0),
            "sends": sends, "teams_429": connector.throttled_count,
            "teams_429_by_window": dict(connector.throttled), "graph_installs": sum(installs.values()),
            "graph_201": installs.get(201, 0), "graph_409": installs.get(409, 0), "graph_429": graph.throttled,
            "reached": len(notices), "lost": args.people - len(notices),
            "duplicate_notices": sum(n - 1 for n in notices.values()),
            "welcomes": sum(welcomes.values()), "duplicate_welcomes": sum(n - 1 for n in welcomes.values()),
            "newcomers_reached": lacking_reached, "install_events": sum(events.statuses.values()),
            "batch_counts": status.get("counts"), "batch_reach": status.get("reach"),
        }


def table(figures: dict[str, Any]) -> str:
    rows = [
        ("people / lacking the app", f"{figures['people']} / {figures['lacking']}"),
        ("time to the last notice", f"{figures['seconds']} s"),
        ("bound (Teams 50/s, installs 30/s)", f"{figures['bound_s']} s (x{figures['ratio']})"),
        ("Teams requests", f"{figures['teams_requests']} (creates {figures['creates_201']} + 403 "
                           f"{figures['creates_403']}, sends {figures['sends']})"),
        ("Teams 429", figures["teams_429"]),
        ("Graph installs", f"{figures['graph_installs']} (201 {figures['graph_201']}, 409 {figures['graph_409']})"),
        ("Graph 429", figures["graph_429"]),
        ("reached / lost", f"{figures['reached']} / {figures['lost']}"),
        ("duplicate notices / welcomes", f"{figures['duplicate_notices']} / {figures['duplicate_welcomes']}"),
        ("welcomes (one per newcomer)", figures["welcomes"]),
        ("batch counts", json.dumps(figures["batch_counts"])),
        ("batch reach", json.dumps(figures["batch_reach"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"reach on {figures['database']}", "-" * (width + 40)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--lacking", type=int, default=1000)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres-url", default=None)
    args = parser.parse_args()
    if not 0 <= args.lacking <= args.people:
        parser.error("--lacking must be between 0 and --people")
    with tempfile.TemporaryDirectory(prefix="bench-reach-") as directory:
        figures = asyncio.run(run(args, Path(directory)))
    print(table(figures))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
