"""The OpenAPI description is served and true: schemathesis drives every route of a running bot, with and
without the Bearer tokens, with data valid and invalid for the description; no answer may be a 5xx or
disagree with the description."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from bot.api.openapi import load_spec
from tests.live_bot import LiveBot

TOKEN = "openapi-test-token"
SPEC = load_spec()
# Tokens are the test's to give or withhold (below); schemathesis generates everything else.
SCHEMA = schemathesis.openapi.from_dict(
    SPEC, config=schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}}))
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
EXAMPLES = 8  # per operation, generation mode and auth: 8 operations x 2 x 2 x 8 = 256 requests


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBot]:
    with LiveBot(tmp_path_factory.mktemp("openapi"), notify_token=TOKEN, metrics_token=TOKEN,
                 prices_token=TOKEN) as bot:
        yield bot


def test_the_description_is_served(live: LiveBot) -> None:
    response = requests.get(f"{live.url}/openapi.json", timeout=10)
    assert response.status_code == 200 and response.json() == load_spec()
    served = {(path, method.upper()) for path, item in SPEC["paths"].items() for method in item}
    routes = {(r.resource.canonical, r.method) for r in live.app.web_app.router.routes()  # type: ignore[union-attr]
              if r.resource is not None and r.method != "HEAD"}
    assert served == routes, "every route is described, and only routes that exist"


def _ground(case: Any, live: LiveBot) -> None:
    """What the description cannot say: generated activities reply to the connector double (never to a
    generated host), a notification's expiry is in the future, its sendAt within a year and before it."""
    if not isinstance(case.body, dict):
        return
    if case.operation.path == "/api/messages" and "serviceUrl" in case.body:
        case.body["serviceUrl"] = live.double.url
    positive = case.meta is None or case.meta.generation.mode is GenerationMode.POSITIVE
    if case.operation.path == "/api/notify" and case.body.get("expiresAt") is not None and positive:
        case.body["expiresAt"] = "2100-01-01T00:00:00Z"
    if case.operation.path == "/api/notify" and case.body.get("sendAt") is not None and positive:
        case.body["sendAt"] = "2020-01-01T00:00:00Z"  # within a year ahead and before expiresAt: a past time goes now


def _has_input(operation: Any) -> bool:
    return bool(operation.definition.raw.get("parameters") or operation.definition.raw.get("requestBody"))


@pytest.mark.parametrize("authorized", [True, False], ids=["with-token", "without-token"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: f"{o.method.upper()} {o.path}")
def test_every_route_conforms(live: LiveBot, operation: Any, mode: GenerationMode, authorized: bool) -> None:
    if mode is GenerationMode.NEGATIVE and not _has_input(operation):
        pytest.skip("nothing to make invalid: no parameters, no body")
    headers = {"Authorization": f"Bearer {TOKEN}"} if authorized else {}
    session = requests.Session()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        _ground(case, live)
        if not authorized and case.headers:
            case.headers.pop("Authorization", None)
        case.call_and_validate(base_url=live.url, session=session, headers=headers, excluded_checks=[
            negative_data_rejection if mode is GenerationMode.POSITIVE else positive_data_acceptance])

    check()
    assert requests.get(f"{live.url}/healthz", timeout=10).status_code == 200
