"""The Graph layer (bot/graph, bot/teams/graph_tokens.py) against the identity and Graph doubles over TLS.

Tokens are real client-credentials tokens from the identity double, per customer tenant, checked by the
Graph double for Graph's audience and the tenant; Graph's answers (201, 409, 403, 404, 429 with Retry-After)
become what the callers act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from bot.config import Config, ConfigError, load_config
from bot.graph.client import GraphClient, GraphError
from bot.graph.limits import InstallLimits
from bot.teams.connector import SharedSession
from bot.teams.graph_tokens import GraphTokens
from bot.teams.tokens import TokenUnavailable
from bot.tls import trust_context
from state.clock import FakeClock
from tests.graph_double import GraphDouble
from tests.identity_double import IdentityDouble

APP_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
SECRET = "graph-s3cret"
TENANT = "0b7e5c1a-2d3f-4e5a-9b6c-7d8e9f0a1b2c"
OTHER_TENANT = "9c8b7a6f-5e4d-4c3b-8a29-1f0e2d3c4b5a"
USER = "3a4b5c6d-7e8f-4a1b-9c2d-3e4f5a6b7c8d"
CATALOG_ID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6"


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityDouble]:
    async with IdentityDouble(tmp_path, clients={APP_ID: SECRET}) as double:
        yield double


@pytest.fixture
async def graph(tmp_path: Path, identity: IdentityDouble, fake_clock: FakeClock) -> AsyncIterator[GraphDouble]:
    async with GraphDouble(tmp_path, identity, clock=fake_clock.monotonic) as double:
        double.add_tenant(TENANT, {USER}, catalog={APP_ID: CATALOG_ID})
        yield double


def config_for(identity: IdentityDouble, graph: GraphDouble, **overrides: object) -> Config:
    settings: dict[str, object] = dict(app_id=APP_ID, app_password=SECRET, login_url=identity.login_url(),
                                       graph_url=graph.url)
    settings.update(overrides)
    return Config(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def session(identity: IdentityDouble, graph: GraphDouble) -> AsyncIterator[SharedSession]:
    shared = SharedSession(ssl_context=trust_context([identity.ca_file, graph.ca_file]))
    yield shared
    await shared.close()


@pytest.fixture
async def tokens(identity: IdentityDouble, graph: GraphDouble, session: SharedSession,
                 fake_clock: FakeClock) -> AsyncIterator[GraphTokens]:
    provider = GraphTokens(config_for(identity, graph), session, fake_clock)
    yield provider
    await provider.close()


@pytest.fixture
def client(graph: GraphDouble, session: SharedSession, tokens: GraphTokens) -> GraphClient:
    return GraphClient(session.get, tokens.for_tenant, graph.url)


async def test_a_graph_token_comes_from_the_customers_tenant_for_graphs_audience(
    identity: IdentityDouble, graph: GraphDouble, tokens: GraphTokens,
) -> None:
    token = await tokens.for_tenant(TENANT).token()
    claims = identity.decode_access_token(token, graph.url)
    assert (claims["tid"], claims["appid"]) == (TENANT, APP_ID)
    (request,) = identity.find("token")
    assert request.path == f"/{TENANT}/oauth2/v2.0/token", "the tenant's authority, not botframework.com"
    assert request.form["scope"] == f"{graph.url}/.default"
    assert await tokens.for_tenant(TENANT).token() == token and identity.counts["token"] == 1, "cached"
    other = await tokens.for_tenant(OTHER_TENANT).token()
    assert identity.decode_access_token(other, graph.url)["tid"] == OTHER_TENANT, "one token per tenant"


async def test_the_login_url_keeps_its_cloud_and_swaps_the_tenant() -> None:
    config = Config(login_url="https://login.microsoftonline.us/MicrosoftServices.onmicrosoft.us")
    assert config.graph_login_url(TENANT) == f"https://login.microsoftonline.us/{TENANT}"
    assert Config().graph_login_url(TENANT) == f"https://login.microsoftonline.com/{TENANT}"


async def test_the_managed_identity_gets_graph_tokens_for_its_own_tenant_only(
    identity: IdentityDouble, graph: GraphDouble, session: SharedSession, fake_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", identity.msi_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", identity.msi_header)
    config = config_for(identity, graph, app_password="", app_type="UserAssignedMSI",
                        app_tenant_id=identity.msi_tenant)
    provider = GraphTokens(config, session, fake_clock)
    try:
        token = await provider.for_tenant(identity.msi_tenant).token()
        assert identity.decode_access_token(token, graph.url)["tid"] == identity.msi_tenant
        assert identity.find("msi")[0].query["resource"] == graph.url
        with pytest.raises(TokenUnavailable, match="managed identity"):
            await provider.for_tenant(TENANT).token()
    finally:
        await provider.close()


async def test_install_then_already_installed_then_its_chat(client: GraphClient, graph: GraphDouble) -> None:
    catalog = await client.catalog_app_id(TENANT, APP_ID)
    assert catalog == CATALOG_ID
    assert await client.catalog_app_id(TENANT, APP_ID) == CATALOG_ID and graph.ops["catalog"] == 1, "cached"
    assert await client.install_for_user(TENANT, USER, CATALOG_ID) is True
    (install,) = graph.installs()
    assert install.body == {"teamsApp@odata.bind": f"{graph.url}/v1.0/appCatalogs/teamsApps/{CATALOG_ID}"}
    assert install.tenant == TENANT
    assert await client.install_for_user(TENANT, USER, CATALOG_ID) is False, "409: already installed"
    assert [r.status for r in graph.installs()] == [201, 409]
    installation = await client.installation(TENANT, USER, CATALOG_ID)
    assert installation is not None
    assert await client.installation_chat(TENANT, USER, installation) == graph.chat_id(USER)


async def test_an_app_the_organisation_has_not_published_has_no_catalog_id(client: GraphClient) -> None:
    assert await client.catalog_app_id(TENANT, "00000000-0000-4000-8000-000000000000") is None


async def test_throttling_and_outages_come_back_with_retry_after(client: GraphClient, graph: GraphDouble) -> None:
    graph.fail_next("install", 429, retry_after=7)
    with pytest.raises(GraphError) as throttled:
        await client.install_for_user(TENANT, USER, CATALOG_ID)
    assert (throttled.value.status, throttled.value.retry_after, throttled.value.retryable) == (429, 7.0, True)
    graph.fail_next("install", 503, retry_after=3)
    with pytest.raises(GraphError) as unavailable:
        await client.install_for_user(TENANT, USER, CATALOG_ID)
    assert (unavailable.value.status, unavailable.value.retry_after, unavailable.value.retryable) == (503, 3.0, True)


async def test_the_double_throttles_installs_past_30_per_second_per_tenant(
    client: GraphClient, graph: GraphDouble, fake_clock: FakeClock,
) -> None:
    users = [f"3a4b5c6d-7e8f-4a1b-9c2d-{n:012x}" for n in range(31)]
    graph.add_tenant(TENANT, users)
    for user in users[:30]:
        assert await client.install_for_user(TENANT, user, CATALOG_ID) is True
    with pytest.raises(GraphError) as throttled:
        await client.install_for_user(TENANT, users[30], CATALOG_ID)
    assert throttled.value.status == 429 and throttled.value.retry_after == 1.0
    fake_clock.advance(1.0)
    assert await client.install_for_user(TENANT, users[30], CATALOG_ID) is True


async def test_no_consent_is_forbidden_and_an_unknown_user_not_found(client: GraphClient, graph: GraphDouble) -> None:
    with pytest.raises(GraphError) as missing:
        await client.install_for_user(TENANT, "00000000-0000-4000-8000-00000000dead", CATALOG_ID)
    assert (missing.value.status, missing.value.retryable) == (404, False)
    graph.add_tenant(TENANT, consented=False)
    with pytest.raises(GraphError) as forbidden:
        await client.install_for_user(TENANT, USER, CATALOG_ID)
    assert (forbidden.value.status, forbidden.value.retryable) == (403, False)
    assert "TeamsAppInstallation.ReadWriteSelfForUser.All" in forbidden.value.message


async def test_graph_refuses_a_token_for_another_audience_or_tenant(
    identity: IdentityDouble, graph: GraphDouble, session: SharedSession, fake_clock: FakeClock,
) -> None:
    wrong_audience = GraphTokens(config_for(identity, graph, graph_url="https://api.botframework.com"), session,
                                 fake_clock)
    try:
        client = GraphClient(session.get, wrong_audience.for_tenant, graph.url)
        with pytest.raises(GraphError) as refused:
            await client.install_for_user(TENANT, USER, CATALOG_ID)
        assert refused.value.status == 401
    finally:
        await wrong_audience.close()
    other = GraphTokens(config_for(identity, graph), session, fake_clock)
    try:  # a token of another tenant: Graph does not know that tenant's users
        graph.add_tenant(OTHER_TENANT)
        client = GraphClient(session.get, lambda tenant: other.for_tenant(OTHER_TENANT), graph.url)
        with pytest.raises(GraphError) as unknown:
            await client.install_for_user(TENANT, USER, CATALOG_ID)
        assert unknown.value.status == 404 and not graph.tenants[TENANT].installed
    finally:
        await other.close()
    with pytest.raises(jwt.InvalidAudienceError):
        identity.decode_access_token(identity.issued[0], graph.url)


@pytest.mark.parametrize("hostile", ["../../me", "3a4b5c6d-7e8f-4a1b-9c2d-3e4f5a6b7c8d/../x", "\x00", "a" * 5000])
async def test_hostile_ids_never_reach_a_graph_url(client: GraphClient, graph: GraphDouble, hostile: str) -> None:
    with pytest.raises(ValueError, match="user id must be a GUID"):
        await client.install_for_user(TENANT, hostile, CATALOG_ID)
    with pytest.raises(ValueError, match="tenant id must be a GUID"):
        await client.install_for_user(hostile, USER, CATALOG_ID)
    assert graph.requests == []


def test_install_limits_allow_30_per_second_per_tenant_and_honour_retry_after(fake_clock: FakeClock) -> None:
    limits = InstallLimits(fake_clock)
    for _ in range(30):
        assert limits.wait(TENANT) == 0
        limits.begin(TENANT)
        limits.complete(TENANT)
    assert 0 < limits.wait(TENANT) <= 1.1
    assert limits.wait(OTHER_TENANT) == 0, "each tenant has its own budget"
    fake_clock.advance(1.1)
    assert limits.wait(TENANT) == 0
    limits.penalize(TENANT, 9)
    assert limits.wait(TENANT) == pytest.approx(9)


def test_install_limits_with_every_slot_in_flight_wait_a_window_not_forever(fake_clock: FakeClock) -> None:
    limits = InstallLimits(fake_clock)
    for _ in range(30):
        limits.begin(TENANT)  # answers not back yet
    assert limits.wait(TENANT) == 1.0, "a finite time to look again (a bench once parked people at +inf)"
    limits.complete(TENANT)
    assert 0 < limits.wait(TENANT) <= 1.1


def test_install_limits_cap_the_app_at_300_per_second_over_all_tenants(fake_clock: FakeClock) -> None:
    limits = InstallLimits(fake_clock)
    for n in range(300):
        tenant = f"tenant-{n % 20}"
        assert limits.wait(tenant) == 0
        limits.begin(tenant)
        limits.complete(tenant)
    assert limits.wait("tenant-new") > 0


def test_graph_settings_defaults_and_refusals() -> None:
    config = load_config({}, env_file=None)
    assert (config.graph_url, config.proactive_install, config.teams_catalog_app_id, config.teams_service_url) == (
        "https://graph.microsoft.com", False, "", "https://smba.trafficmanager.net/teams/")
    gov = load_config({"GRAPH_URL": "https://graph.microsoft.us/", "TEAMS_SERVICE_URL": "https://smba.infra.gov."
                       "teams.microsoft.us/teams", "TEAMS_CATALOG_APP_ID": CATALOG_ID.upper()}, env_file=None)
    assert (gov.graph_url, gov.teams_service_url, gov.teams_catalog_app_id) == (
        "https://graph.microsoft.us", "https://smba.infra.gov.teams.microsoft.us/teams/", CATALOG_ID)
    for env, name in [({"GRAPH_URL": "http://graph.microsoft.com"}, "GRAPH_URL"),
                      ({"GRAPH_URL": "https://graph.microsoft.com/v1.0"}, "GRAPH_URL"),
                      ({"TEAMS_CATALOG_APP_ID": "not-a-guid\n"}, "TEAMS_CATALOG_APP_ID"),
                      ({"TEAMS_SERVICE_URL": "http://smba.trafficmanager.net/teams/"}, "TEAMS_SERVICE_URL"),
                      ({"PROACTIVE_INSTALL": "maybe"}, "PROACTIVE_INSTALL"),
                      ({"PROACTIVE_INSTALL": "true"}, "PROACTIVE_INSTALL")]:
        with pytest.raises(ConfigError, match=name):
            load_config(env, env_file=None)
