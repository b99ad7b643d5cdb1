"""kill -9 between the Graph install and the send, then restart on the same database (both engines): the
person gets the app once, one welcome and the notice once.

The bot runs as `python main.py` against the in-process doubles (Bot Connector with TLS, identity, Graph). The
Graph double kills the bot the moment it has installed the app, before answering: the bot never learns of the
install, Teams' install event finds it dead. The restarted bot (same REPLICA_ID) takes its previous life's
claim back, Graph answers 409, and the parked notice follows the welcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.bot_process import Bot, start_bot
from tests.connector_double import ConnectorDouble
from tests.graph_double import GraphDouble
from tests.identity_double import IdentityDouble

APP_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
BOT = f"28:{APP_ID}"
SECRET = "crash-s3cret"
TOKEN = "reach-crash-test"
TENANT = "0b7e5c1a-2d3f-4e5a-9b6c-7d8e9f0a1b2c"
CATALOG_ID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6"
NEWCOMER = "3a4b5c6d-7e8f-4a1b-9c2d-3e4f5a6b7c8d"
GUARD_S = 30.0  # only guards against a hang


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityDouble]:
    async with IdentityDouble(tmp_path, clients={APP_ID: SECRET}) as double:
        yield double


@pytest.fixture
async def connector(identity: IdentityDouble) -> AsyncIterator[ConnectorDouble]:
    double = ConnectorDouble()
    await double.start(ssl_context=identity.server_context())
    double.require_install = True
    yield double
    await double.stop()


@pytest.fixture
async def graph(tmp_path: Path, identity: IdentityDouble) -> AsyncIterator[GraphDouble]:
    async with GraphDouble(tmp_path, identity) as double:
        double.add_tenant(TENANT, {NEWCOMER}, catalog={APP_ID: CATALOG_ID})
        yield double


async def finished(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """The batch status once it is finished (the send's outcome is written within a flush interval)."""
    deadline = time.monotonic() + GUARD_S
    while True:
        async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            status: dict[str, Any] = await response.json()
        if status.get("finished") or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)  # bounded polling of another process, as bot_process's readiness check does


async def test_a_crash_between_install_and_send_resumes_after_restart(
    tmp_path: Path, database_url: str, identity: IdentityDouble, connector: ConnectorDouble, graph: GraphDouble,
) -> None:
    settings = {
        "MicrosoftAppId": APP_ID, "MicrosoftAppPassword": SECRET, "REPLICA_ID": "reach-bot",
        "ToBotFromChannelOpenIdMetadataUrl": identity.metadata_url, "ToChannelFromBotLoginUrl": identity.login_url(),
        "SSL_CERT_FILE": identity.ca_file, "REQUESTS_CA_BUNDLE": graph.ca_file, "GRAPH_URL": graph.url,
        "PROACTIVE_INSTALL": "true", "TEAMS_SERVICE_URL": connector.url, "SERVICE_URL_HOSTS": "127.0.0.1",
    }
    bots: list[Bot] = [await start_bot(tmp_path, database_url, "first", TOKEN, **settings)]

    async def install_then_crash(tenant: str, user: str, chat_id: str) -> None:
        connector.install(tenant, user, BOT)
        if len(graph.installs()) == 1:
            await bots[0].kill()  # installed in Graph; the bot never hears the answer

    graph.on_install = install_then_crash
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{bots[0].url}/api/notify", headers={"Authorization": f"Bearer {TOKEN}"},
                                 json={"to": {"users": [NEWCOMER], "tenantId": TENANT}, "text": "Fire drill at 11",
                                       "dedupKey": "drill"}) as response:
                assert response.status == 202, await response.text()
                batch_id = (await response.json())["batchId"]
            await graph.wait_for(lambda g: len(g.installs(201)) == 1, GUARD_S)
            await bots[0].process.wait()
            assert connector.sent_activities() == [], "killed before anything was sent"
            bots.append(await start_bot(tmp_path, database_url, "second", TOKEN, **settings))
            await connector.wait_for(lambda r: r.op == "send" and r.status == 201
                                     and r.body.get("text") == "Fire drill at 11", timeout=GUARD_S)
            status = await finished(http, f"{bots[1].url}/api/notify/batches/{batch_id}")
        conversation = connector.install(TENANT, NEWCOMER, BOT)
        sent = connector.sent_activities(conversation, type="message")
        assert len(sent) == 2, [s.get("text") or "card" for s in sent]
        assert "installed Price Watch for you" in sent[0]["attachments"][0]["content"]["body"][1]["text"]
        assert sent[1]["text"] == "Fire drill at 11"
        assert [r.status for r in graph.installs()] == [201, 409], "installed once; the restart found it done"
        assert status["counts"] == {"sent": 1} and status["reach"] == {"installed": 1}, status
    finally:
        for bot in bots:
            await bot.stop()
        for bot in bots:
            print(bot.tail(1500))
