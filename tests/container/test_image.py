"""The image as operators run it: podman, hardened as the Kubernetes manifests run it (read-only root, no
capabilities, non-root), with authentication on against the identity double over TLS (its CA mounted as
SSL_CERT_FILE) and the Bot Connector double as Teams.

- the image's metadata: user, port, stop signal, healthcheck, /data volume;
- the start-up guards: no app id on 0.0.0.0, or no METRICS_TOKEN there, and it refuses to start (exit 2);
- SQLite on a volume: /livez, /healthz, the healthcheck, a signed turn, a notify; SIGTERM → exit 0 before the
  grace period's SIGKILL; the data is still there after a restart;
- two containers on the tests' throwaway PostgreSQL deliver a broadcast to every conversation once.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.connector_double import ConnectorDouble, RecordedRequest
from tests.container.images import LIMITS, Container, inspect, podman, run, run_once, volume
from tests.identity_double import IdentityDouble
from tests.outbox_seed import conversation_ids, seed_references
from tests.pg_server import PostgresServer

pytestmark = [pytest.mark.container, pytest.mark.timeout(2400)]

APP_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "client-secret-value"
ISSUER = SCOPE = "https://api.botframework.us"
NOTIFY, METRICS = "notify-token", "metrics-token"
GRACE_S = 60  # deploy/kubernetes: terminationGracePeriodSeconds
CA_IN_CONTAINER = "/run/test-ca/identity-ca.pem"
_ids = itertools.count(1)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityDouble]:
    async with IdentityDouble(tmp_path, clients={APP_ID: SECRET}) as double:
        yield double


@pytest.fixture
async def connector(identity: IdentityDouble) -> AsyncIterator[ConnectorDouble]:
    """Teams' Bot Connector over TLS (with authentication on, a serviceUrl must be https)."""
    double = ConnectorDouble()
    await double.start(ssl_context=identity.server_context())
    yield double
    await double.stop()


def bot_env(identity: IdentityDouble, **extra: str) -> dict[str, str]:
    """What an operator sets, pointed at the doubles; HOST stays the image's 0.0.0.0."""
    return {
        "MicrosoftAppId": APP_ID, "MicrosoftAppPassword": SECRET,
        "ToBotFromChannelOpenIdMetadataUrl": identity.metadata_url, "ToBotFromChannelTokenIssuer": ISSUER,
        "ToChannelFromBotLoginUrl": identity.login_url("botframework.com"), "ToChannelFromBotOAuthScope": SCOPE,
        "SSL_CERT_FILE": CA_IN_CONTAINER, "SERVICE_URL_HOSTS": "127.0.0.1",
        "NOTIFY_TOKEN": NOTIFY, "METRICS_TOKEN": METRICS, "LOG_LEVEL": "INFO", **extra,
    }


def ca_mount(identity: IdentityDouble) -> str:
    """The identity double's CA, readable by the image's user 10001 (pytest's directories are private)."""
    directory = Path(identity.ca_file).parent / "ca-for-containers"
    directory.mkdir(mode=0o755, exist_ok=True)
    directory.chmod(0o755)
    target = directory / Path(CA_IN_CONTAINER).name
    shutil.copyfile(identity.ca_file, target)
    target.chmod(0o644)
    return f"{directory}:{Path(CA_IN_CONTAINER).parent}:ro"


async def until_healthy(http: aiohttp.ClientSession, container: Container, timeout: float = 120) -> float:
    """Poll /healthz (bounded) until 200; the seconds since `podman run` began."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{container.url}/healthz") as response:
                if response.status == 200:
                    return time.monotonic() - container.started_at
        except aiohttp.ClientError:
            pass
        if not container.state()["Running"]:
            break
        await asyncio.sleep(0.1)  # readiness polling of another process, not a wait for timing
    raise AssertionError(f"{container.name} never answered /healthz 200\n{container.logs()}")


async def until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        await asyncio.sleep(0.1)  # bounded polling for what another process brings about


def signed_message(identity: IdentityDouble, connector: ConnectorDouble, text: str) -> tuple[dict[str, Any], str]:
    activity = {
        "type": "message", "id": f"m{next(_ids)}", "text": text, "channelId": "msteams",
        "serviceUrl": connector.url, "conversation": {"id": "dm-ada", "conversationType": "personal"},
        "from": {"id": "29:ada", "name": "Ada", "aadObjectId": "aad-ada"},
        "recipient": {"id": f"28:{APP_ID}", "name": "Price Watch"}, "channelData": {"tenant": {"id": "tenant-1"}},
    }
    token = identity.channel_token(issuer=ISSUER, audience=APP_ID, service_url=connector.url)
    return activity, f"Bearer {token}"


def delivered(request: RecordedRequest) -> bool:
    return request.op in ("send", "reply") and request.status is not None and request.status < 300


def test_the_image_runs_as_non_root_on_3978_with_a_healthcheck_and_a_data_volume(image: str) -> None:
    details = inspect(image)
    config = details["Config"]
    healthcheck = details.get("Healthcheck") or config.get("Healthcheck")  # podman keeps it beside Config
    assert config["User"] == "10001:10001"
    assert "3978/tcp" in config["ExposedPorts"]
    assert config["StopSignal"] == "SIGTERM"
    assert healthcheck and "/livez" in " ".join(healthcheck["Test"])
    assert "/data" in config["Volumes"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HOST"] == "0.0.0.0" and env["DATABASE_URL"] == "sqlite:////data/bot.sqlite3"
    listing = podman("run", "--rm", "--network", "host", *LIMITS, "--entrypoint", "sh", image, "-c",
                     "ls /app; test ! -e /opt/venv/bin/pip && echo no-pip; python -c 'import pytest' 2>&1 | tail -1")
    assert "no-pip" in listing.stdout, "the runtime stage carries no installer"
    assert "No module named 'pytest'" in listing.stdout, "test tools stay out of the image"
    app = set(listing.stdout.split()) & {"bot", "dialogs", "docs", "main.py", "scheduler", "state", "tests", "bench"}
    assert app == {"bot", "dialogs", "docs", "main.py", "scheduler", "state"}, listing.stdout


def test_the_start_up_guards_hold_in_the_image(image: str) -> None:
    code, output = run_once({"METRICS_TOKEN": METRICS}, image=image)
    assert code == 2 and "MicrosoftAppId" in output, output
    code, output = run_once({"MicrosoftAppId": APP_ID, "MicrosoftAppPassword": SECRET}, image=image)
    assert code == 2 and "METRICS_TOKEN" in output, output


async def test_sqlite_on_a_volume_serves_a_turn_and_a_notify_and_stops_on_sigterm(
    image: str, identity: IdentityDouble, connector: ConnectorDouble, tmp_path: Path,
) -> None:
    env = bot_env(identity)
    port = free_port()
    async with aiohttp.ClientSession() as http:
        with volume("price-watch-test-data") as data:
            container = run("price-watch-test-sqlite", port, env, image=image,
                            mounts=[f"{data}:/data", ca_mount(identity)])
            try:
                seconds = await until_healthy(http, container)
                print(f"\n`podman run` to a healthy /healthz: {seconds:.1f} s", file=sys.stderr)
                async with http.get(f"{container.url}/livez") as response:
                    assert response.status == 200
                assert podman("healthcheck", "run", container.name, check=False).returncode == 0, container.logs()
                async with http.get(f"{container.url}/healthz?detail=1",
                                    headers={"Authorization": f"Bearer {METRICS}"}) as response:
                    detail = await response.json()
                    assert response.status == 200, detail

                # a turn, signed as the channel signs it; the reply carries the bot's token from the identity double
                activity, authorization = signed_message(identity, connector, "help")
                async with http.post(f"{container.url}/api/messages", json=activity,
                                     headers={"Authorization": authorization}) as response:
                    assert response.status == 200, await response.text()
                await until(lambda: any(delivered(r) for r in connector.find(conversation_id="dm-ada")), "reply")
                reply = next(r for r in connector.find(conversation_id="dm-ada") if delivered(r))
                assert "watch" in str(reply.body.get("text", "")), reply.body
                assert reply.authorization in {f"Bearer {token}" for token in identity.issued}
                async with http.post(f"{container.url}/api/messages", json=activity) as response:
                    assert response.status == 401, "no channel token, no turn"

                # a notify to the conversation the turn introduced
                async with http.post(f"{container.url}/api/notify", headers={"Authorization": f"Bearer {NOTIFY}"},
                                     json={"to": {"conversations": ["dm-ada"]}, "text": "from the container"}) as r:
                    assert r.status == 202, await r.text()
                await until(lambda: any(delivered(r) and "from the container" in str(r.body.get("text"))
                                        for r in connector.find(conversation_id="dm-ada")), "notification")

                assert container.stop(GRACE_S) == 0, container.logs()
                assert "stopped" in container.logs()
            finally:
                container.remove()

            # the volume kept the database: a new container knows the conversation without another turn
            again = run("price-watch-test-sqlite-2", port, env, image=image,
                        mounts=[f"{data}:/data", ca_mount(identity)])
            try:
                await until_healthy(http, again)
                async with http.post(f"{again.url}/api/notify", headers={"Authorization": f"Bearer {NOTIFY}"},
                                     json={"to": {"conversations": ["dm-ada"]}, "text": "after a restart"}) as r:
                    answer = await r.json()
                    assert r.status == 202 and answer["queued"] == 1, answer
                await until(lambda: any(delivered(r) and "after a restart" in str(r.body.get("text"))
                                        for r in connector.find(conversation_id="dm-ada")), "notification")
                assert again.stop(GRACE_S) == 0, again.logs()
            finally:
                again.remove()


async def test_two_containers_on_postgresql_deliver_a_broadcast_to_every_conversation_once(
    image: str, identity: IdentityDouble, connector: ConnectorDouble, postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    conversations = conversation_ids(tenants=2, per_tenant=40, prefix="a:container")
    await seed_references(url, connector.url, conversations)
    containers: list[Container] = []
    async with aiohttp.ClientSession() as http:
        try:
            for n in range(2):
                containers.append(run(f"price-watch-test-pg-{n}", free_port(),
                                      bot_env(identity, DATABASE_URL=url, REPLICA_ID=f"container-{n}",
                                              LEASE_SECONDS="6"),
                                      image=image, mounts=[ca_mount(identity)]))
            for container in containers:
                await until_healthy(http, container)

            async def live(container: Container) -> int:
                async with http.get(f"{container.url}/healthz?detail=1",
                                    headers={"Authorization": f"Bearer {METRICS}"}) as response:
                    return len((await response.json())["replica"]["live"])

            for container in containers:  # each has seen the other before the broadcast
                deadline = time.monotonic() + 60
                while await live(container) < 2:
                    assert time.monotonic() < deadline, container.logs()
                    await asyncio.sleep(0.2)

            async with http.post(f"{containers[0].url}/api/notify", headers={"Authorization": f"Bearer {NOTIFY}"},
                                 json={"to": {"all": True}, "text": "broadcast from a container"}) as response:
                answer = await response.json()
                assert response.status == 202 and answer["queued"] == len(conversations), answer

            def sent() -> Counter[str]:
                return Counter(r.conversation_id or "" for r in connector.find()
                               if delivered(r) and "broadcast from a container" in str(r.body.get("text")))

            await until(lambda: len(sent()) == len(conversations), "broadcast to every conversation", 120)
            assert max(sent().values()) == 1, "every conversation got it once"
            senders = {r.authorization for r in connector.find() if delivered(r)}
            assert senders <= {f"Bearer {token}" for token in identity.issued}
            for container in containers:
                assert container.stop(GRACE_S) == 0, container.logs()
            assert max(sent().values()) == 1
        finally:
            for container in containers:
                container.remove()
