"""Hypothesis-generated activities posted to /api/messages of a running bot: whatever the type, shape, size or
wrongly typed nested field, the answer is never a 5xx, malformed Universal Actions get the spec's 400 error
body, and afterwards the bot is healthy and still answers a normal message."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.live_bot import LiveBot

BOT = {"id": "28:bot", "name": "Price Watch"}
CONVERSATIONS = ["dm-1", "dm-2", "group-1", "19:chan@thread.tacv2"]
INVOKE_NAMES = ["adaptiveCard/action", "task/fetch", "task/submit", "composeExtension/query", "fileConsent/invoke",
                "actionableMessage/executeAction", "signin/verifyState", "config/fetch", "tab/fetch", ""]
_ids = itertools.count(1)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
texts = st.one_of(st.text(max_size=40), st.text(min_size=2000, max_size=20_000),
                  st.sampled_from(["help", "watch gadget below 10", "list", "stop 1", "mute", "analyze gizmo",
                                   "ꙮ" * 500, "\u202e\u0000 \ufeff", "<at>Price Watch</at> help"]))
accounts = st.fixed_dictionaries({"id": st.sampled_from(["29:ada", "29:bob", BOT["id"]]) | st.text(min_size=1)},
                                 optional={"name": st.text(max_size=30), "aadObjectId": st.text(max_size=40)})
card_actions = st.one_of(
    json_values,
    st.fixed_dictionaries({"action": json_values}),
    st.fixed_dictionaries({"action": st.fixed_dictionaries(
        {"type": st.just("Action.Execute") | st.sampled_from(["Action.Submit", "Execute"]) | json_values},
        optional={"verb": st.none() | st.text(max_size=10) | json_values, "data": json_values | st.fixed_dictionaries(
            {"command": st.just("alert")},
            optional={"action": st.sampled_from(["snooze", "stop", "mute"]) | json_values,
                      "watchId": st.integers() | st.text(max_size=25) | json_values,
                      "args": json_values, "product": json_values})})}),
)


@st.composite
def activities(draw: st.DrawFn, service_url: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["message", "invoke", "conversationUpdate", "installationUpdate",
                                 "messageReaction", "event", "typing", "odd"]))
    activity: dict[str, Any] = {
        "type": draw(st.text(min_size=1, max_size=20)) if kind == "odd" else kind,
        "id": f"h-{next(_ids)}", "channelId": draw(st.sampled_from(["msteams", "emulator", "webchat"])),
        "serviceUrl": service_url,
        "conversation": {"id": draw(st.sampled_from(CONVERSATIONS)),
                         "conversationType": draw(st.sampled_from(["personal", "groupChat", "channel"]))},
        "from": draw(accounts), "recipient": dict(BOT),
        "channelData": draw(st.fixed_dictionaries({}, optional={
            "tenant": st.fixed_dictionaries({"id": st.sampled_from(["t1", "t2"])}),
            "team": st.fixed_dictionaries({"id": st.text(max_size=10)}, optional={"name": st.text(max_size=10)}),
            "eventType": st.sampled_from(["teamMemberAdded", "teamRenamed", "channelCreated"]),
        })),
    }
    if kind == "message":
        activity["text"] = draw(texts)
        if draw(st.booleans()):
            activity["value"] = draw(json_values | st.fixed_dictionaries(
                {"command": st.just("alert"), "action": json_values, "watchId": json_values}))
    elif kind == "invoke":
        activity["name"] = draw(st.sampled_from(INVOKE_NAMES) | st.text(max_size=30))
        activity["value"] = draw(card_actions if activity["name"] == "adaptiveCard/action" else json_values)
    elif kind == "conversationUpdate":
        activity["membersAdded"] = draw(st.lists(accounts, max_size=3))
        activity["membersRemoved"] = draw(st.lists(accounts, max_size=2))
    elif kind == "installationUpdate":
        activity["action"] = draw(st.sampled_from(["add", "remove", "add-upgrade"]) | st.text(max_size=10))
    elif kind == "messageReaction":
        activity["reactionsAdded"] = draw(st.lists(st.fixed_dictionaries({"type": json_values}), max_size=2))
        activity["replyToId"] = draw(st.text(max_size=20))
    if draw(st.integers(0, 3)) == 0:  # a wrong type (or a surprise) somewhere in the activity
        activity[draw(st.sampled_from(sorted(activity)))] = draw(json_values)
    if draw(st.integers(0, 3)) == 0:
        nested = draw(st.sampled_from(["conversation", "from", "channelData"]))
        if isinstance(activity.get(nested), dict):
            activity[nested][draw(st.sampled_from(["id", "tenant", "name", "team"]))] = draw(json_values)
    return activity


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBot]:
    with LiveBot(tmp_path_factory.mktemp("hostile")) as bot:
        for conversation_id in CONVERSATIONS:
            bot.double.add_conversation(conversation_id, "t1")
        yield bot


def post(live: LiveBot, session: requests.Session, activity: Any) -> requests.Response:
    """Serialised here, so generated infinities reach the bot as the non-JSON `Infinity` they become."""
    return session.post(f"{live.url}/api/messages", data=json.dumps(activity), timeout=30,
                        headers={"Content-Type": "application/json"})


def test_generated_activities_never_get_a_5xx(live: LiveBot) -> None:
    session = requests.Session()
    statuses: set[int] = set()

    @settings(max_examples=200, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(activity=activities(live.double.url))
    def check(activity: dict[str, Any]) -> None:
        response = post(live, session, activity)
        statuses.add(response.status_code)
        assert response.status_code in (200, 400, 403, 501), (response.status_code, response.text[:500])
        if response.status_code == 403:  # only Teams is served
            assert activity.get("channelId") != "msteams" and response.json()["error"]["field"] == "channelId"
        elif response.status_code == 200:
            assert activity.get("channelId") == "msteams", activity
        if response.status_code == 501:  # the protocol's answer to an invoke nobody handles, and only that
            assert activity["type"] == "invoke" and activity.get("name") != "adaptiveCard/action", activity
        if response.status_code == 400:
            body = response.json()
            assert "error" in body or body.get("type") == "application/vnd.microsoft.error", body

    check()
    assert {200, 400, 403} <= statuses, "the generator must reach both processed and refused activities"
    assert_still_healthy(live, session)


def test_malformed_universal_actions_get_the_spec_error(live: LiveBot) -> None:
    session = requests.Session()

    @settings(max_examples=60, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(value=card_actions)
    def check(value: Any) -> None:
        activity = {"type": "invoke", "name": "adaptiveCard/action", "id": f"h-{next(_ids)}", "channelId": "msteams",
                    "serviceUrl": live.double.url, "conversation": {"id": "dm-1", "conversationType": "personal"},
                    "from": {"id": "29:ada"}, "recipient": dict(BOT), "value": value}
        response = post(live, session, activity)
        action = value.get("action") if isinstance(value, dict) else None
        if isinstance(action, dict) and action.get("type") == "Action.Execute" \
                and isinstance(action.get("verb"), str | None):
            assert response.status_code == 200, response.text[:500]
            assert response.json()["statusCode"] == 200
        else:
            assert response.status_code == 400, response.text[:500]
            body = response.json()
            assert body["statusCode"] == 400 and body["type"] == "application/vnd.microsoft.error"
            assert {"code", "message"} <= set(body["value"]) and all(isinstance(v, str) for v in body["value"].values())

    check()
    assert_still_healthy(live, session)


def assert_still_healthy(live: LiveBot, session: requests.Session) -> None:
    assert session.get(f"{live.url}/healthz", timeout=10).status_code == 200
    before = len(live.double.sent_activities("dm-healthy"))
    live.double.add_conversation("dm-healthy", "t1")
    hello = {"type": "message", "id": f"h-{next(_ids)}", "channelId": "msteams", "serviceUrl": live.double.url,
             "conversation": {"id": "dm-healthy", "conversationType": "personal"}, "from": {"id": "29:zed"},
             "recipient": dict(BOT), "text": "help", "channelData": {"tenant": {"id": "t1"}}}
    assert post(live, session, hello).status_code == 200
    assert len(live.double.sent_activities("dm-healthy")) > before, "a normal message is still answered"
