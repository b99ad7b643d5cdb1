"""The connector double speaks the SDK's routes, throttles like Teams, and plays scripted faults."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botbuilder.schema import Activity, ChannelAccount, ConversationParameters
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import MicrosoftAppCredentials
from botframework.connector.models import ErrorResponseException

from state.clock import FakeClock
from tests.connector_double import FAULTS, ConnectorDouble, Limits

TENANT = "tenant-1"


def message(text: str = "hi", bot: str = "28:bot", tenant: str = TENANT) -> dict[str, Any]:
    return {"type": "message", "text": text, "from": {"id": bot}, "channelData": {"tenant": {"id": tenant}}}


def one_to_one(user: str = "29:ada", tenant: str | None = TENANT) -> dict[str, Any]:
    params: dict[str, Any] = {"bot": {"id": "28:bot"}, "members": [{"id": user}], "isGroup": False}
    if tenant:
        params["channelData"] = {"tenant": {"id": tenant}}
    return params


@pytest.fixture
async def double(fake_clock: FakeClock) -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble(clock=fake_clock.monotonic) as running:
        yield running


class Client:
    """A thin aiohttp client for the double: returns (status, headers, parsed JSON or None)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any, Any]:
        async with self.session.request(method, self.url + path, json=body, **kwargs) as response:
            text = await response.text()
            return response.status, response.headers, json.loads(text) if text else None

    async def send(self, conversation: str, activity: dict[str, Any] | None = None) -> tuple[int, Any, Any]:
        return await self.call("POST", f"v3/conversations/{conversation}/activities", activity or message())


@pytest.fixture
def client(http: aiohttp.ClientSession, double: ConnectorDouble) -> Client:
    return Client(http, double.url)


# ---- routes, as the SDK calls them ---------------------------------------------------------------------


async def test_sdk_connector_client_round_trip(double: ConnectorDouble) -> None:
    conversation = "19:abc@thread.tacv2;messageid=1700"  # characters the SDK percent-encodes
    async with ConnectorClient(MicrosoftAppCredentials("", ""), base_url=double.url) as connector:
        sent = await connector.conversations.send_to_conversation(
            conversation, Activity(type="message", text="hello", from_property=ChannelAccount(id="28:bot"))
        )
        reply = await connector.conversations.reply_to_activity(
            conversation, "made-up-id", Activity(type="message", text="continued")
        )
        await connector.conversations.update_activity(
            conversation, sent.id, Activity(type="message", id=sent.id, text="edited")
        )
        await connector.conversations.delete_activity(conversation, reply.id)
        created = await connector.conversations.create_conversation(
            ConversationParameters(
                bot=ChannelAccount(id="28:bot"),
                members=[ChannelAccount(id="29:ada")],
                tenant_id=TENANT,
                activity=Activity(type="message", text="first"),
            )
        )
        member = await connector.conversations.get_conversation_member(created.id, "29:ada")
        page = await connector.conversations.get_conversation_paged_members(created.id, page_size=50)
        with pytest.raises(ErrorResponseException) as refused:
            await connector.conversations.get_conversation_member(created.id, "29:nobody")

    assert [r.op for r in double.requests] == [
        "send", "reply", "update", "delete", "create", "get_member", "get_paged_members", "get_member"
    ]  # fmt: skip
    assert double.requests[0].conversation_id == conversation
    assert double.requests[0].path == f"/v3/conversations/{conversation}/activities"
    assert double.requests[1].activity_id == "made-up-id"
    assert double.requests[6].query == {"pageSize": "50"}
    assert [a["text"] for a in double.sent_activities(conversation)] == ["hello", "continued"]
    assert double.activity(conversation, sent.id) == {"type": "message", "id": sent.id, "text": "edited"}
    assert double.activity(conversation, reply.id) is None
    assert created.service_url == double.url and created.activity_id
    assert (double.activity(created.id, created.activity_id) or {}).get("text") == "first"
    assert member.id == "29:ada"
    assert [m.id for m in page.members] == ["29:ada"] and page.continuation_token is None
    assert refused.value.error.error.code == "MemberNotFoundInConversation"


async def test_records_method_body_headers_and_clock_time(
    client: Client, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    fake_clock.advance(12.5)
    status, _, body = await client.call(
        "POST", "v3/conversations/c1/activities", message("one"), headers={"Authorization": "Bearer t0k"}
    )
    assert status == 201 and body["id"]
    (record,) = double.requests
    assert (record.method, record.op, record.conversation_id) == ("POST", "send", "c1")
    assert record.body == message("one") and record.authorization == "Bearer t0k"
    assert record.time == fake_clock.monotonic() and record.status == 201 and record.response == body


async def test_sent_activities_filters_by_conversation_and_type_and_skips_refused(
    client: Client, double: ConnectorDouble
) -> None:
    await client.send("c1", message("a"))
    await client.send("c2", message("b"))
    await client.send("c1", {"type": "typing", "from": {"id": "28:bot"}})
    double.fail_next("server_error")
    await client.send("c1", message("refused"))
    assert [a.get("text") for a in double.sent_activities("c1")] == ["a", None]
    assert [a["text"] for a in double.sent_activities(type="message")] == ["a", "b"]


async def test_update_and_delete_need_a_known_activity(client: Client, double: ConnectorDouble) -> None:
    _, _, sent = await client.send("c1", message("draft"))
    path = f"v3/conversations/c1/activities/{sent['id']}"
    assert (await client.call("PUT", path, message("final")))[2] == {"id": sent["id"]}
    assert (double.activity("c1", sent["id"]) or {}).get("text") == "final"
    status, _, body = await client.call("PUT", "v3/conversations/c1/activities/404", message())
    assert status == 404 and body["error"]["code"] == "ActivityNotFound"
    assert (await client.call("DELETE", path))[0] == 200
    assert (await client.call("DELETE", path))[0] == 404


async def test_create_conversation_reuses_the_one_to_one(client: Client, double: ConnectorDouble) -> None:
    first = await client.call("POST", "v3/conversations", one_to_one("29:ada"))
    again = await client.call("POST", "v3/conversations", one_to_one("29:ada"))
    other = await client.call("POST", "v3/conversations", one_to_one("29:bob"))
    other_tenant = await client.call("POST", "v3/conversations", one_to_one("29:ada", tenant="tenant-2"))
    assert first[0] == again[0] == 201
    assert first[2]["id"] == again[2]["id"]
    assert len({first[2]["id"], other[2]["id"], other_tenant[2]["id"]}) == 3
    assert first[2]["serviceUrl"] == double.url
    assert double.conversations[first[2]["id"]].tenant_id == TENANT


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(one_to_one(tenant=None), id="no tenant"),
        pytest.param({**one_to_one(), "isGroup": True}, id="group"),
        pytest.param({**one_to_one(), "members": [{"id": "29:a"}, {"id": "29:b"}]}, id="two members"),
        pytest.param({**one_to_one(), "members": []}, id="no members"),
    ],
)
async def test_create_conversation_refuses_what_teams_refuses(client: Client, params: dict[str, Any]) -> None:
    status, _, body = await client.call("POST", "v3/conversations", params)
    assert status == 400 and body["error"]["code"] == "BadArgument"


async def test_paged_members_pages_by_100_by_default(client: Client, double: ConnectorDouble) -> None:
    double.add_conversation("team-1", TENANT, [{"id": f"29:u{n:03}", "name": f"U{n}"} for n in range(250)])
    seen: list[str] = []
    pages: list[int] = []
    token = None
    for _ in range(10):
        query: dict[str, str] = {"continuationToken": token} if token else {}
        status, _, page = await client.call("GET", "v3/conversations/team-1/pagedmembers", params=query)
        assert status == 200
        seen += [m["id"] for m in page["members"]]
        pages.append(len(page["members"]))
        token = page.get("continuationToken")
        if not token:
            break
    assert pages == [100, 100, 50]
    assert seen == [f"29:u{n:03}" for n in range(250)]


async def test_paged_members_honours_page_size_and_rejects_bad_tokens(
    client: Client, double: ConnectorDouble
) -> None:
    double.add_conversation("c1", TENANT, [{"id": f"29:u{n}"} for n in range(5)])
    _, _, page = await client.call("GET", "v3/conversations/c1/pagedmembers", params={"pageSize": "2"})
    assert [m["id"] for m in page["members"]] == ["29:u0", "29:u1"]
    query = {"pageSize": "2", "continuationToken": page["continuationToken"]}
    _, _, page = await client.call("GET", "v3/conversations/c1/pagedmembers", params=query)
    assert [m["id"] for m in page["members"]] == ["29:u2", "29:u3"]
    status, _, body = await client.call(
        "GET", "v3/conversations/c1/pagedmembers", params={"continuationToken": "garbage"}
    )
    assert status == 400 and body["error"]["code"] == "BadArgument"
    status, _, body = await client.call("GET", "v3/conversations/unknown/pagedmembers")
    assert status == 404 and body["error"]["code"] == "ConversationNotFound"
    status, _, members = await client.call("GET", "v3/conversations/c1/members")
    assert status == 200 and len(members) == 5


async def test_team_details_and_channels(client: Client, double: ConnectorDouble) -> None:
    double.add_team(
        "19:team@thread.tacv2", "Pricing", [{"id": "19:general", "name": "General"}], aadGroupId="g1"
    )
    double.add_member("19:team@thread.tacv2", {"id": "29:ada"})
    _, _, details = await client.call("GET", "v3/teams/19:team@thread.tacv2")
    _, _, channels = await client.call("GET", "v3/teams/19:team@thread.tacv2/conversations")
    assert details == {
        "id": "19:team@thread.tacv2", "name": "Pricing", "aadGroupId": "g1",
        "channelCount": 1, "memberCount": 1,
    }  # fmt: skip
    assert channels == {"conversations": [{"id": "19:general", "name": "General"}]}
    assert (await client.call("GET", "v3/teams/unknown"))[0] == 404


# ---- throttling ----------------------------------------------------------------------------------------

Call = Callable[[int], Awaitable[tuple[int, Any, Any]]]


async def drive_until(
    call: Call, clock: FakeClock, target: str, max_calls: int = 10_000
) -> tuple[list[float], Any]:
    """Call as fast as allowed (on a 429 from another window, wait its Retry-After) until `target` refuses.

    Returns the fake times of the accepted calls and the refusing response's headers.
    """
    accepted: list[float] = []
    for n in range(max_calls):
        status, headers, body = await call(n)
        if status < 300:
            accepted.append(clock.monotonic())
            continue
        assert status == 429, body
        assert body["error"]["code"] == "Throttled"
        if body["error"]["message"] == target:
            return accepted, headers
        clock.advance(int(headers["Retry-After"]))
    raise AssertionError(f"{target!r} never refused in {max_calls} calls")


def check_refusal(accepted: list[float], headers: Any, now: float, seconds: float, limit: int) -> None:
    """The refused call came when exactly `limit` calls were accepted in the window; Retry-After says when."""
    in_window = [t for t in accepted if t > now - seconds]
    assert len(in_window) == limit
    assert int(headers["Retry-After"]) == max(1, math.ceil(in_window[0] + seconds - now))


SEND_WINDOWS = [(1, 7), (2, 8), (30, 60), (3600, 1800)]
MEMBER_WINDOWS = [(1, 14), (2, 16), (30, 120), (3600, 3600)]


@pytest.mark.parametrize(("seconds", "limit"), SEND_WINDOWS)
async def test_send_per_bot_per_conversation_windows(
    client: Client, double: ConnectorDouble, fake_clock: FakeClock, seconds: int, limit: int
) -> None:
    double.throttling = True
    target = f"send per bot per conversation: {limit} per {seconds}s"

    async def send(n: int) -> tuple[int, Any, Any]:
        return await client.send("c1")

    accepted, headers = await drive_until(send, fake_clock, target)
    check_refusal(accepted, headers, fake_clock.monotonic(), seconds, limit)
    assert double.throttled[target] == 1
    fake_clock.advance(int(headers["Retry-After"]))
    assert (await client.send("c1"))[0] == 201


@pytest.mark.parametrize(("seconds", "limit"), SEND_WINDOWS)
async def test_create_conversation_windows(
    client: Client, double: ConnectorDouble, fake_clock: FakeClock, seconds: int, limit: int
) -> None:
    double.throttling = True
    target = f"create per bot per conversation: {limit} per {seconds}s"

    async def create(n: int) -> tuple[int, Any, Any]:
        return await client.call("POST", "v3/conversations", one_to_one("29:ada"))

    accepted, headers = await drive_until(create, fake_clock, target)
    check_refusal(accepted, headers, fake_clock.monotonic(), seconds, limit)
    assert double.throttled[target] == 1


@pytest.mark.parametrize(("seconds", "limit"), MEMBER_WINDOWS)
async def test_get_members_windows(
    client: Client, double: ConnectorDouble, fake_clock: FakeClock, seconds: int, limit: int
) -> None:
    double.throttling = True
    double.add_conversation("team-1", TENANT, [{"id": "29:ada"}])
    target = f"members per bot per conversation: {limit} per {seconds}s"

    async def get(n: int) -> tuple[int, Any, Any]:
        return await client.call("GET", "v3/conversations/team-1/pagedmembers")

    accepted, headers = await drive_until(get, fake_clock, target)
    check_refusal(accepted, headers, fake_clock.monotonic(), seconds, limit)


@pytest.mark.parametrize(("seconds", "limit"), [(1, 14), (2, 16)])
async def test_per_conversation_all_bots_windows(
    client: Client, double: ConnectorDouble, fake_clock: FakeClock, seconds: int, limit: int
) -> None:
    double.throttling = True
    target = f"send per conversation (all bots): {limit} per {seconds}s"

    async def send_as_another_bot(n: int) -> tuple[int, Any, Any]:
        return await client.send("c1", message(bot=f"28:bot-{n}"))

    accepted, headers = await drive_until(send_as_another_bot, fake_clock, target)
    check_refusal(accepted, headers, fake_clock.monotonic(), seconds, limit)


@pytest.mark.parametrize("tenant_rps", [50, 5])
async def test_per_tenant_window(http: aiohttp.ClientSession, fake_clock: FakeClock, tenant_rps: int) -> None:
    async with ConnectorDouble(clock=fake_clock.monotonic, throttling=True, tenant_rps=tenant_rps) as double:
        client = Client(http, double.url)

        async def send_to_a_new_conversation(n: int) -> tuple[int, Any, Any]:
            return await client.send(f"c{n}")

        target = f"per tenant: {tenant_rps} per 1s"
        accepted, headers = await drive_until(send_to_a_new_conversation, fake_clock, target)
        check_refusal(accepted, headers, fake_clock.monotonic(), 1, tenant_rps)
        assert len(accepted) == tenant_rps  # all at one instant: per-conversation windows never filled
        assert (await client.send("elsewhere", message(tenant="tenant-2")))[0] == 201  # budget per tenant


async def test_windows_slide_with_the_clock(
    client: Client, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    double.throttling = True
    for _ in range(7):  # at 0, 1/8, ..., 6/8 s (binary fractions: exact on a float clock)
        assert (await client.send("c1"))[0] == 201
        fake_clock.advance(0.125)
    status, headers, _ = await client.send("c1")  # at 7/8 s
    assert status == 429 and headers["Retry-After"] == "1"  # 1/8 s, rounded up to whole seconds
    fake_clock.advance(0.125)  # the first send leaves the 1 s window
    assert (await client.send("c1"))[0] == 201
    assert (await client.send("c1"))[0] == 429  # the second send is still inside it


async def test_retry_after_rounds_up_to_whole_seconds(
    client: Client, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    double.throttling = True
    double.limits = Limits(send=((10, 1),))
    assert (await client.send("c1"))[0] == 201
    fake_clock.advance(0.75)
    status, headers, body = await client.send("c1")
    assert status == 429 and headers["Retry-After"] == "10"  # 9.25 s to go
    assert body == {"error": {"code": "Throttled", "message": "send per bot per conversation: 1 per 10s"}}


async def test_tenant_is_taken_from_the_created_conversation(
    client: Client, double: ConnectorDouble, fake_clock: FakeClock
) -> None:
    double.throttling = True
    double.limits = Limits(tenant=((1, 2),))
    _, _, created = await client.call("POST", "v3/conversations", one_to_one())  # one tenant request
    no_tenant_in_body = {"type": "message", "text": "hi"}
    assert (await client.send(created["id"], no_tenant_in_body))[0] == 201
    status, headers, _ = await client.send(created["id"], no_tenant_in_body)
    assert status == 429 and headers["Retry-After"] == "1"
    assert double.throttled_count == 1


async def test_throttling_is_off_by_default(client: Client, double: ConnectorDouble) -> None:
    statuses = {(await client.send("c1"))[0] for _ in range(20)}
    assert statuses == {201} and double.throttled_count == 0


# ---- faults --------------------------------------------------------------------------------------------

ERROR_FAULTS = [name for name, fault in FAULTS.items() if fault.hold_seconds is None]


@pytest.mark.parametrize("name", ERROR_FAULTS)
async def test_scripted_fault_hits_only_its_conversation_once(
    client: Client, double: ConnectorDouble, name: str
) -> None:
    double.fail_next(name, conversation_id="c1")
    assert (await client.send("c2"))[0] == 201
    status, headers, body = await client.send("c1")
    assert (status, body["error"]["code"]) == (FAULTS[name].status, FAULTS[name].code)
    assert ("Retry-After" in headers) == (name == "throttled")
    assert (await client.send("c1"))[0] == 201


@pytest.mark.parametrize("status", [500, 502, 503, 504, 412, 413, 400, 404])
async def test_fault_by_status_uses_teams_codes(client: Client, double: ConnectorDouble, status: int) -> None:
    double.fail_next(status, count=2)
    first, second, third = [await client.send("c1") for _ in range(3)]
    assert first[0] == second[0] == status and third[0] == 201
    assert first[2]["error"]["code"] in {f.code for f in FAULTS.values() if f.status == status}


async def test_persistent_fault_filtered_by_operation(client: Client, double: ConnectorDouble) -> None:
    double.add_conversation("c1", TENANT, [{"id": "29:ada"}])
    double.fail_next("blocked_by_user", count=None, conversation_id="c1", ops={"send", "reply"})
    assert [(await client.send("c1"))[0] for _ in range(3)] == [403, 403, 403]
    assert (await client.call("GET", "v3/conversations/c1/members"))[0] == 200
    double.clear_faults()
    assert (await client.send("c1"))[0] == 201
    with pytest.raises(ValueError, match="unknown fault"):
        double.fail_next("nope")


async def test_oversized_message_gets_413_only_when_enabled(client: Client, double: ConnectorDouble) -> None:
    big = message("x" * 30_000)
    assert (await client.send("c1", big))[0] == 201
    double.size_limit = True
    status, _, body = await client.send("c1", big)
    assert status == 413 and body["error"]["code"] == "MessageSizeTooBig"
    assert (await client.send("c1", message("x" * 20_000)))[0] == 201


async def test_malformed_bodies_get_bad_argument(client: Client, double: ConnectorDouble) -> None:
    async with client.session.post(
        client.url + "v3/conversations/c1/activities",
        data=b"{nope",
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "BadArgument"
    status, _, body = await client.send("c1", {"text": "no type"})
    assert status == 400 and body["error"]["code"] == "BadArgument"


async def test_timeout_fault_holds_until_released(client: Client, double: ConnectorDouble) -> None:
    double.hold_next(conversation_id="c1")
    pending = asyncio.ensure_future(client.send("c1"))
    held = await double.wait_for(lambda r: r.held)
    assert held.status is None and double.held_count == 1 and not pending.done()
    double.release_held()
    status, _, body = await pending
    assert status == 201 and body["id"] and double.held_count == 0
    assert held.status == 201


async def test_timeout_fault_gives_up_after_its_hold(client: Client, double: ConnectorDouble) -> None:
    double.fail_next("timeout", hold_seconds=0)
    assert (await client.send("c1"))[0] == 201
    assert double.requests[0].held


async def test_stopping_releases_held_requests(http: aiohttp.ClientSession) -> None:
    double = ConnectorDouble()
    await double.start()
    double.hold_next()
    pending = asyncio.ensure_future(Client(http, double.url).send("c1"))
    await double.wait_for(lambda r: r.held)
    await double.stop()
    assert (await pending)[0] == 201


# ---- waiting -------------------------------------------------------------------------------------------


async def test_wait_for_is_woken_by_the_matching_request(client: Client, double: ConnectorDouble) -> None:
    await client.send("c1", message("old"))
    waiting = asyncio.ensure_future(
        double.wait_for(lambda r: r.conversation_id == "c2" and r.status == 201, since=double.last_seq)
    )
    await client.send("c1", message("other conversation"))
    assert not waiting.done()
    await client.send("c2", message("new"))
    found = await waiting
    assert found.body["text"] == "new"
    already = await double.wait_for(lambda r: r.op == "send")  # matches an earlier request at once
    assert already.body["text"] == "old"


async def test_wait_for_times_out_with_what_it_saw(client: Client, double: ConnectorDouble) -> None:
    await client.send("c1")
    with pytest.raises(TimeoutError, match="POST /v3/conversations/c1/activities -> 201"):
        await double.wait_for(lambda r: r.op == "delete", timeout=0)


# ---- as its own process --------------------------------------------------------------------------------


async def test_runs_as_a_process_with_throttling(http: aiohttp.ClientSession) -> None:
    script = Path(__file__).with_name("connector_double.py")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "--port", "0", "--throttle", "--tenant-rps", "3", stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        client = Client(http, url)
        # One send per conversation, so only the tenant window (3 per 1s, real clock) can refuse; 61 local
        # requests taking over 20 s is not a thing, so some must be refused.
        statuses = [(await client.send(f"c{n}"))[0] for n in range(61)]
        assert set(statuses) == {201, 429}
        _, _, stats = await client.call("GET", "_double/stats")
        assert stats["ops"] == {"send": 61}
        assert stats["throttled"] == {"per tenant: 3 per 1s": statuses.count(429)}
        async with http.get(url + "healthz") as response:
            assert response.status == 200
    finally:
        process.terminate()
        assert await process.wait() == 0
