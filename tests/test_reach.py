"""Reaching people who never wrote to the bot, over HTTP: /api/notify → Bot Connector double (create 403) →
Graph double (install, over TLS with real client-credentials tokens of the customer's tenant) → Teams'
install event → welcome → notice. Also 409, Graph's 429 with Retry-After, no consent, PROACTIVE_INSTALL off,
and whole teams (a roster of 250 members: 3 pages).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from bot.config import Config
from state.clock import FakeClock
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble
from tests.graph_double import GraphDouble
from tests.identity_double import IdentityDouble

APP_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
BOT = f"28:{APP_ID}"
SECRET = "reach-s3cret"
ISSUER = "https://api.botframework.com"
NOTIFY = "notify-token"
TENANT = "0b7e5c1a-2d3f-4e5a-9b6c-7d8e9f0a1b2c"
CATALOG_ID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6"
NEWCOMER = "3a4b5c6d-7e8f-4a1b-9c2d-3e4f5a6b7c8d"
GUARD_S = 10.0  # only guards against a hang


def person(n: int) -> str:
    return f"3a4b5c6d-7e8f-4a1b-9c2d-{n:012x}"


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityDouble]:
    async with IdentityDouble(tmp_path, clients={APP_ID: SECRET}) as double:
        yield double


@pytest.fixture
async def connector(identity: IdentityDouble) -> AsyncIterator[ConnectorDouble]:
    """With auth on, a serviceUrl must be https: the double serves TLS with the identity double's test CA."""
    double = ConnectorDouble()
    await double.start(ssl_context=identity.server_context())
    double.require_install = True
    yield double
    await double.stop()


@pytest.fixture
async def graph(tmp_path: Path, identity: IdentityDouble, fake_clock: FakeClock) -> AsyncIterator[GraphDouble]:
    async with GraphDouble(tmp_path, identity, clock=fake_clock.monotonic) as double:
        double.add_tenant(TENANT, {NEWCOMER, *(person(n) for n in range(5))}, catalog={APP_ID: CATALOG_ID})
        yield double


class Teams:
    """Plays Teams around the bot: signs inbound activities, and after a Graph install sends the bot the
    installationUpdate of the new personal chat (as Teams does)."""

    def __init__(self, http: aiohttp.ClientSession, identity: IdentityDouble, connector: ConnectorDouble,
                 graph: GraphDouble) -> None:
        self.http, self.identity, self.connector = http, identity, connector
        self.app: BotApplication | None = None
        self.events = True
        graph.on_install = self.installed

    async def post(self, activity: dict[str, Any]) -> int:
        assert self.app is not None
        token = self.identity.channel_token(issuer=ISSUER, audience=APP_ID, service_url=activity["serviceUrl"])
        async with self.http.post(bot_url(self.app), json=activity,
                                  headers={"Authorization": f"Bearer {token}"}) as response:
            return response.status

    def activity(self, kind: str, conversation: str, user: str, conversation_type: str = "personal",
                 **fields: Any) -> dict[str, Any]:
        return {"type": kind, "id": f"{kind}-{conversation}-{user}", "channelId": "msteams",
                "serviceUrl": self.connector.url,
                "conversation": {"id": conversation, "conversationType": conversation_type, "tenantId": TENANT},
                "from": {"id": f"29:{user}", "aadObjectId": user, "name": f"Person {user[-4:]}"},
                "recipient": {"id": BOT, "name": "Price Watch"}, "channelData": {"tenant": {"id": TENANT}},
                **fields}

    async def installed(self, tenant: str, user: str, chat_id: str) -> None:
        conversation = self.connector.install(tenant, user, BOT)
        if self.events:
            assert await self.post(self.activity("installationUpdate", conversation, user, action="add")) == 200


@pytest.fixture
def teams(http: aiohttp.ClientSession, identity: IdentityDouble, connector: ConnectorDouble,
          graph: GraphDouble) -> Teams:
    return Teams(http, identity, connector, graph)


def config(tmp_path: Path, identity: IdentityDouble, graph: GraphDouble, connector: ConnectorDouble,
           database_url: str, **overrides: Any) -> Config:
    base = Config(database_url=database_url, app_id=APP_ID, app_password=SECRET,
                  open_id_metadata_url=identity.metadata_url, login_url=identity.login_url(),
                  ca_files=(identity.ca_file, graph.ca_file), notify_token=NOTIFY, graph_url=graph.url,
                  proactive_install=True, teams_service_url=connector.url,
                  service_url_hosts=("127.0.0.1",))  # the doubles' host, as an operator of a test setup would set
    return replace(base, **overrides)


@pytest.fixture
async def bot(tmp_path: Path, start_bot: StartBot, bot_database_url: str, identity: IdentityDouble,
              graph: GraphDouble, connector: ConnectorDouble, teams: Teams) -> AsyncIterator[BotApplication]:
    app = await start_bot(config(tmp_path, identity, graph, connector, bot_database_url))
    teams.app = app
    yield app


async def notify(http: aiohttp.ClientSession, app: BotApplication, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(bot_url(app, "/api/notify"), json=body,
                         headers={"Authorization": f"Bearer {NOTIFY}"}) as response:
        return response.status, await response.json()


async def batch(http: aiohttp.ClientSession, app: BotApplication, batch_id: str) -> dict[str, Any]:
    async with http.get(bot_url(app, f"/api/notify/batches/{batch_id}"),
                        headers={"Authorization": f"Bearer {NOTIFY}"}) as response:
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


async def deliver(app: BotApplication) -> None:
    """Let the worker and the installer do what is due now. The worker's maintenance (claims renewed) runs
    first, as its real-time timer would have while a test moved the fake clock on."""
    await app.worker.maintain()
    for _ in range(4):
        app.worker.pump()
        await app.worker.idle()
        await app.worker.flush()
        await app.installer.run_due()
    await app.worker.flush()


def messages_to(connector: ConnectorDouble, conversation: str) -> list[str]:
    """What a person saw, in order: the welcome card's first line of text, or the notice's text."""
    seen = []
    for body in connector.sent_activities(conversation, type="message"):
        if body.get("attachments"):
            seen.append(str(body["attachments"][0]["content"]["body"][1]["text"]))
        else:
            seen.append(str(body.get("text")))
    return seen


async def test_someone_without_the_app_gets_it_installed_a_welcome_saying_why_then_the_notice(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
    identity: IdentityDouble,
) -> None:
    status, answer = await notify(http, bot, {"to": {"users": [NEWCOMER], "tenantId": TENANT},
                                              "text": "Office closed on Friday", "dedupKey": "closure"})
    assert status == 202 and answer["unknown"] == {"users": [], "conversations": []} and len(answer["ids"]) == 1
    await deliver(bot)
    creates = connector.find("create")
    assert [c.status for c in creates][:1] == [403], "Teams first says: not installed for this person"
    assert creates[0].body["members"] == [{"id": NEWCOMER}] and creates[0].body["bot"] == {"id": BOT}
    (install,) = graph.installs()
    assert (install.status, install.tenant) == (201, TENANT)
    token = next(r for r in graph.requests if r.op == "install")
    assert token.tenant == TENANT
    token_request = identity.find("token")[-1]
    assert token_request.path == f"/{TENANT}/oauth2/v2.0/token"
    conversation = connector.install(TENANT, NEWCOMER, BOT)
    await connector.wait_for(lambda r: r.op == "send" and r.conversation_id == conversation and r.status == 201
                             and r.body.get("text") == "Office closed on Friday", timeout=GUARD_S)
    seen = messages_to(connector, conversation)
    assert len(seen) == 2 and "Your organisation installed Price Watch for you" in seen[0], seen
    assert seen[1] == "Office closed on Friday"
    status_now = await batch(http, bot, answer["batchId"])
    assert status_now["counts"] == {"sent": 1} and status_now["reach"] == {"installed": 1}
    assert status_now["finished"] is True
    # the same dedupKey again: nothing new, for nobody
    status, again = await notify(http, bot, {"to": {"users": [NEWCOMER], "tenantId": TENANT},
                                             "text": "Office closed on Friday", "dedupKey": "closure"})
    await deliver(bot)
    assert again["duplicates"] == 1 and len(messages_to(connector, conversation)) == 2
    # a later notice goes straight to the chat: no create, no install, no second welcome
    await notify(http, bot, {"to": {"users": [NEWCOMER], "tenantId": TENANT}, "text": "And Monday"})
    await deliver(bot)
    assert messages_to(connector, conversation)[2:] == ["And Monday"] and len(graph.installs()) == 1
    metrics = await (await http.get(bot_url(bot, "/metrics"))).text()
    assert 'bot_reach_steps_total{step="installed"} 1.0' in metrics
    assert 'bot_graph_requests_total{op="installedApps",status="201"} 1.0' in metrics


async def test_already_installed_409_still_sends_one_welcome_and_the_notice(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
    teams: Teams,
) -> None:
    graph.tenants[TENANT].installed[NEWCOMER] = "installed-meanwhile"  # e.g. the person installed it themselves
    teams.events = False  # Teams' event was long ago: the bot creates the chat again
    connector.install(TENANT, NEWCOMER, BOT)
    connector.fail_next("forbidden_operation", ops=["create"])  # Teams had not caught up at the first create
    _, answer = await notify(http, bot, {"to": {"users": [NEWCOMER], "tenantId": TENANT}, "text": "Hello all"})
    await deliver(bot)
    assert [r.status for r in graph.installs()] == [409]
    conversation = connector.install(TENANT, NEWCOMER, BOT)
    await connector.wait_for(lambda r: r.op == "send" and r.body.get("text") == "Hello all" and r.status == 201,
                             timeout=GUARD_S)
    seen = messages_to(connector, conversation)
    assert len(seen) == 2 and "installed Price Watch for you" in seen[0] and seen[1] == "Hello all"
    assert (await batch(http, bot, answer["batchId"]))["reach"] == {"installed": 1}


async def test_graph_throttling_is_waited_out_as_retry_after_says(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
    fake_clock: FakeClock,
) -> None:
    graph.fail_next("install", 429, retry_after=30)
    _, answer = await notify(http, bot, {"to": {"users": [NEWCOMER], "tenantId": TENANT}, "text": "Later"})
    await deliver(bot)
    assert [r.status for r in graph.installs()] == [429]
    status_now = await batch(http, bot, answer["batchId"])
    assert status_now["reach"] == {"installing": 1} and status_now["counts"] == {"held": 1}
    assert not status_now["finished"]
    fake_clock.advance(29)
    await deliver(bot)
    assert len(graph.installs()) == 1, "not before Retry-After"
    fake_clock.advance(1.5)
    await deliver(bot)
    assert [r.status for r in graph.installs()] == [429, 201]
    await connector.wait_for(lambda r: r.op == "send" and r.body.get("text") == "Later", timeout=GUARD_S)
    assert (await batch(http, bot, answer["batchId"]))["reach"] == {"installed": 1}


async def test_forty_newcomers_are_installed_30_in_the_first_second_the_rest_after(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
    fake_clock: FakeClock,
) -> None:
    newcomers = [person(100 + n) for n in range(40)]
    graph.add_tenant(TENANT, newcomers)
    _, answer = await notify(http, bot, {"to": {"users": newcomers, "tenantId": TENANT}, "text": "Welcome aboard"})
    for _ in range(4):
        await deliver(bot)
        fake_clock.advance(0.2)  # within the first second: the worker's creates go on, installs stop at 30
    assert len(graph.installs(201)) == 30 and graph.throttled == 0
    for _ in range(40):
        if len([b for b in connector.sent_activities() if b.get("text") == "Welcome aboard"]) == 40:
            break
        fake_clock.advance(1.1)
        await deliver(bot)
    assert len(graph.installs(201)) == 40 and graph.throttled == 0, "Graph's 30/s held, nobody left waiting"
    assert len([b for b in connector.sent_activities() if b.get("text") == "Welcome aboard"]) == 40
    assert (await batch(http, bot, answer["batchId"]))["reach"] == {"installed": 40}


async def test_without_admin_consent_they_end_forbidden(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    graph.add_tenant(TENANT, consented=False)
    _, answer = await notify(http, bot, {"to": {"users": [NEWCOMER, person(1)], "tenantId": TENANT}, "text": "x"})
    await deliver(bot)
    status_now = await batch(http, bot, answer["batchId"])
    assert status_now["reach"] == {"forbidden": 2} and status_now["counts"] == {"failed": 2}
    assert status_now["finished"]
    async with http.get(bot_url(bot, f"/api/notify/{answer['ids'][0]}"),
                        headers={"Authorization": f"Bearer {NOTIFY}"}) as response:
        assert (await response.json())["lastError"].startswith("forbidden: 403 Forbidden")
    assert connector.sent_activities() == []
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "TeamsAppInstallation.ReadWriteSelfForUser.All" in errors[0], "one line per tenant"


async def test_with_proactive_install_off_they_end_not_installed(
    tmp_path: Path, http: aiohttp.ClientSession, start_bot: StartBot, bot_database_url: str,
    identity: IdentityDouble, graph: GraphDouble, connector: ConnectorDouble, teams: Teams,
) -> None:
    app = await start_bot(config(tmp_path, identity, graph, connector, bot_database_url, proactive_install=False))
    teams.app = app
    _, answer = await notify(http, app, {"to": {"users": [NEWCOMER, "29:someone-unknown", "not-a-guid"],
                                                "tenantId": TENANT}, "text": "x"})
    assert answer["unknown"]["users"] == ["29:someone-unknown", "not-a-guid"], "only AAD object ids are tried"
    await deliver(app)
    status_now = await batch(http, app, answer["batchId"])
    assert status_now["reach"] == {"not installed": 1} and status_now["counts"] == {"failed": 1}
    async with http.get(bot_url(app, f"/api/notify/{answer['ids'][0]}"),
                        headers={"Authorization": f"Bearer {NOTIFY}"}) as response:
        assert "PROACTIVE_INSTALL is off" in (await response.json())["lastError"]
    assert graph.requests == [] and identity.find("token") != []


async def test_someone_who_has_the_app_is_reached_at_the_tenants_last_bot_connector(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
) -> None:
    connector.install(TENANT, NEWCOMER, BOT)
    _, answer = await notify(http, bot, {"to": {"users": [NEWCOMER], "tenantId": TENANT}, "text": "Hi there"})
    await deliver(bot)
    (create,) = connector.find("create")
    assert create.status == 201 and graph.requests == []
    assert [b.get("text") for b in connector.sent_activities(create.conversation_id)] == ["Hi there"]
    assert "reach" not in await batch(http, bot, answer["batchId"])


async def test_a_team_the_bot_is_not_in_is_404_naming_the_field(
    http: aiohttp.ClientSession, bot: BotApplication,
) -> None:
    status, answer = await notify(http, bot, {"to": {"team": "19:unknown@thread.tacv2"}, "text": "x"})
    assert status == 404 and answer["error"]["field"] == "to.team" and "not in team" in answer["error"]["message"]


@pytest.mark.parametrize(("to", "field"), [
    ({"users": [NEWCOMER], "tenantId": "not-a-guid"}, "to.tenantId"),
    ({"users": [NEWCOMER], "tenantId": f"{TENANT}\n"}, "to.tenantId"),
    ({"users": [NEWCOMER], "tenantId": "x" * 5000}, "to.tenantId"),
    ({"users": [NEWCOMER], "tenantId": 7}, "to.tenantId"),
    ({"all": True, "tenantId": TENANT}, "to.tenantId"),
    ({"conversations": ["c"], "tenantId": TENANT}, "to.tenantId"),
    ({"team": "19:abc@thread.tacv2\x07"}, "to.team"),
    ({"team": ""}, "to.team"),
    ({"team": ["19:abc@thread.tacv2"]}, "to.team"),
    ({"team": "19:abc@thread.tacv2", "users": [NEWCOMER]}, "to"),
])
async def test_hostile_targets_are_refused_naming_the_field(
    http: aiohttp.ClientSession, bot: BotApplication, graph: GraphDouble, to: dict[str, Any], field: str,
) -> None:
    status, answer = await notify(http, bot, {"to": to, "text": "x"})
    assert status == 400 and answer["error"]["field"] == field, answer
    assert graph.requests == []


async def test_a_team_of_250_is_reached_one_by_one_from_three_roster_pages(
    http: aiohttp.ClientSession, bot: BotApplication, connector: ConnectorDouble, graph: GraphDouble,
    teams: Teams, fake_clock: FakeClock,
) -> None:
    team = "19:team-of-250@thread.tacv2"
    connector.add_team(team, "Everyone", tenant_id=TENANT)
    connector.add_member(team, {"id": BOT, "name": "Price Watch"})
    members = [person(1000 + n) for n in range(250)]
    for aad in members:
        connector.add_member(team, {"id": f"29:{aad}", "aadObjectId": aad, "name": f"Member {aad[-4:]}",
                                    "tenantId": TENANT})
    channel = teams.activity("conversationUpdate", team, person(1), "channel",
                             channelData={"tenant": {"id": TENANT}, "team": {"id": team, "name": "Everyone"},
                                          "channel": {"id": team, "name": "General"}})
    assert await teams.post(channel) == 200
    status, answer = await notify(http, bot, {"to": {"team": team}, "text": "All hands at 3", "dedupKey": "hands"})
    assert status == 202 and answer["state"] == "expanding", "a roster is always read in the background"
    reached: set[str] = set()

    def everyone(request: Any) -> bool:
        if request.op == "send" and request.status == 201 and request.body.get("text") == "All hands at 3":
            reached.add(request.conversation_id or "")
        return len(reached) >= 250

    for _ in range(40):  # the scheduler reads the pages; the worker sends what they queue, 50 a second
        await deliver(bot)
        if len(reached) >= 250:
            break
        fake_clock.advance(1.1)
        await asyncio.sleep(0.02)  # yields to the scheduler's tasks (nothing here waits for a time to pass)
    await connector.wait_for(everyone, timeout=GUARD_S)
    pages = connector.find("get_paged_members")
    assert len(pages) == 3 and {p.query.get("pageSize") for p in pages} == {"100"}
    assert len(reached) == 250 and team not in reached, "1:1 chats, never a post in the channel"
    assert len([b for b in connector.sent_activities() if b.get("text") == "All hands at 3"]) == 250, "once each"
    creates = connector.find("create", status=201)
    assert sorted(c.body["members"][0]["id"] for c in creates) == sorted(f"29:{aad}" for aad in members)
    assert graph.requests == [], "team members can be messaged without an install"
    status_now = await batch(http, bot, answer["batchId"])
    assert status_now["counts"] == {"sent": 250} and status_now["finished"] and status_now["state"] != "expanding"
    _, again = await notify(http, bot, {"to": {"team": team}, "text": "All hands at 3", "dedupKey": "hands"})
    for _ in range(40):  # until the second request's roster is read
        await deliver(bot)
        if (await batch(http, bot, again["batchId"]))["finished"]:
            break
        fake_clock.advance(1.1)
        await asyncio.sleep(0.02)
    await deliver(bot)
    assert len(connector.find("get_paged_members")) == 6
    assert (await batch(http, bot, again["batchId"]))["counts"] == {}, "every member already had it"
    assert len([b for b in connector.sent_activities() if b.get("text") == "All hands at 3"]) == 250, "dedupKey"


async def test_a_tenant_the_bot_does_not_serve_is_not_reached(
    tmp_path: Path, http: aiohttp.ClientSession, start_bot: StartBot, bot_database_url: str,
    identity: IdentityDouble, graph: GraphDouble, connector: ConnectorDouble, teams: Teams,
) -> None:
    app = await start_bot(config(tmp_path, identity, graph, connector, bot_database_url,
                                 allowed_tenants=("11111111-2222-4333-8444-555555555555",)))
    teams.app = app
    status, answer = await notify(http, app, {"to": {"users": [NEWCOMER], "tenantId": TENANT}, "text": "x"})
    assert status == 202 and answer["unknown"]["users"] == [NEWCOMER], "ALLOWED_TENANTS: not a target at all"
    await deliver(app)
    assert connector.find("create") == [] and graph.requests == []
