"""Nothing from input reaches a request line or a header: every id field refuses control and separator
characters with a 400 naming the field, free text (where line breaks are legitimate) goes out in the JSON body
only, and the HTTP client refuses CR/LF/NUL in what it would write whoever asks.

A running bot (local mode) sends to a raw-socket server (tests/raw_http.py) that records the request and header
lines exactly as written, so an injected header line would be seen byte for byte.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.api.messages import check_activity
from bot.teams.http1 import ConnectionPool, InvalidRequest, request_head
from bot.validation import check_id, check_service_url
from state.outbox import OutboxItem
from state.references import ConversationRecord
from tests.live_bot import LiveBot
from tests.raw_http import UNSAFE, RawServer

NOTIFY = "injection-notify-token"
CHANNEL = "19:chan@thread.tacv2"
DM = "a:dm-raw"
HEADERS = {"host", "accept", "content-type", "user-agent", "x-ms-conversation-id", "content-length"}
_ids = itertools.count(1)
unsafe = st.sampled_from(UNSAFE)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveBot, RawServer]]:
    with LiveBot(tmp_path_factory.mktemp("injection"), notify_token=NOTIFY, prices_token=NOTIFY) as bot:
        raw = RawServer()
        bot.run(raw.start)
        for conversation_id, kind in ((CHANNEL, "channel"), (DM, "personal")):
            assert post_activity(bot, activity(raw.url, conversation_id, kind, "conversationUpdate")).status_code \
                == 200
        yield bot, raw
        bot.run(raw.stop)


def activity(service_url: str, conversation_id: str, kind: str, type_: str = "message",
             **fields: Any) -> dict[str, Any]:
    return {"type": type_, "id": f"in-{next(_ids)}", "channelId": "msteams", "serviceUrl": service_url,
            "conversation": {"id": conversation_id, "conversationType": kind}, "from": {"id": "29:ada"},
            "recipient": {"id": "28:bot", "name": "Price Watch"}, "channelData": {"tenant": {"id": "t1"}}, **fields}


def post_activity(live: LiveBot, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{live.url}/api/messages", data=json.dumps(body), timeout=30,
                         headers={"Content-Type": "application/json"})


def post_api(live: LiveBot, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{live.url}{path}", data=json.dumps(body), timeout=30,
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {NOTIFY}"})


def settle(live: LiveBot) -> None:
    """Let the worker send what is due and write the outcomes."""
    async def run() -> None:
        assert live.app is not None
        for _ in range(3):
            live.app.worker.pump()
            await live.app.worker.idle()
        await live.app.worker.flush()

    live.run(run)


def assert_clean_heads(raw: RawServer) -> None:
    """No request or header line carries a control or separator character, and no header was injected."""
    for line in raw.head_lines():
        assert not any(c in line for c in UNSAFE), repr(line)
    for request in raw.requests:
        assert set(request.headers) <= HEADERS | {"authorization"}, request.lines


def spliced(base: str, char: str, at: int) -> str:
    at = at % (len(base) + 1)
    return base[:at] + char + base[at:]


# ---- the report, as it was filed ---------------------------------------------------------------------------------


def test_the_reported_header_injection_is_a_400_and_nothing_is_sent(live: tuple[LiveBot, RawServer]) -> None:
    bot, raw = live
    before = len(raw.requests)
    hostile = f"{CHANNEL};messageid=1\r\nX-Evil: injected"
    answer = post_api(bot, "/api/notify", {"to": {"conversations": [hostile]}, "text": "hi"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == "to.conversations.0"
    smuggled = f"{CHANNEL};messageid=1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /v3/conversations/evil/activities"
    answer = post_api(bot, "/api/notify", {"to": {"conversations": [smuggled]}, "text": "hi"})
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "to.conversations.0"
    settle(bot)
    assert len(raw.requests) == before
    assert not any("evil" in line.lower() for line in raw.head_lines())


def test_a_thread_suffix_must_be_digits_and_playground_ids_are_fine(live: tuple[LiveBot, RawServer]) -> None:
    bot, raw = live
    for bad in (f"{CHANNEL};messageid=", f"{CHANNEL};messageid=12a", f"{CHANNEL};messageid=1;messageid=2",
                f"{CHANNEL};messageid=١٢"):
        answer = post_api(bot, "/api/notify", {"to": {"conversations": [bad]}, "text": "hi"})
        assert answer.status_code == 400 and answer.json()["error"]["field"] == "to.conversations.0", bad
        refused = post_activity(bot, activity(raw.url, bad, "channel"))
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "conversation.id", bad
    for fine in (f"{CHANNEL};messageid=1616161616161", "personal-chat-id", "user-id-0", "8:orgid:ada",
                 "a:1xYz-_.~!$&'()*+,=", "29:1Ĳ ünïcødé"):
        answer = post_api(bot, "/api/notify", {"to": {"conversations": [fine]}, "text": "hi"})
        assert answer.status_code == 202, (fine, answer.text)
    assert check_id("personal-chat-id") == "personal-chat-id"


def test_a_service_url_is_https_and_http_only_for_loopback_in_local_mode() -> None:
    assert check_service_url("https://smba.trafficmanager.net/amer/", local=False)
    assert check_service_url("http://localhost:56150/", local=True)
    assert check_service_url("http://127.0.0.1:3979/", local=True)
    assert check_service_url("http://[::1]:3979/", local=True)
    for bad, local in (("http://127.0.0.1:3979/", False), ("http://smba.trafficmanager.net/amer/", True),
                       ("ftp://smba.trafficmanager.net/", True), ("https://user:pw@smba.trafficmanager.net/", False),
                       ("https://smba.trafficmanager.net/a\r\nX-Evil: 1", False), ("/relative/only", True)):
        with pytest.raises(ValueError):
            check_service_url(bad, local=local)
    body = activity("http://127.0.0.1:1/", "dm", "personal")
    assert check_activity(body, local=True) is None
    problem = check_activity(body, local=False)
    assert problem is not None and problem[0] == "serviceUrl"


# ---- every id field, every unsafe character ------------------------------------------------------------------

NOTIFY_FIELDS = {
    "to.conversations.0": lambda v: {"to": {"conversations": [v]}, "text": "hi"},
    "to.users.0": lambda v: {"to": {"users": [v]}, "text": "hi"},
    "dedupKey": lambda v: {"to": {"conversations": [DM]}, "text": "hi", "dedupKey": v},
}
PRICE_FIELDS = {
    "product": lambda v: {"product": v, "price": 9.5, "currency": "USD", "source": "feed"},
    "source": lambda v: {"product": "gadget", "price": 9.5, "currency": "USD", "source": v},
    "url": lambda v: {"product": "gadget", "price": 9.5, "currency": "USD", "source": "feed",
                      "url": f"https://shop.example/{v}"},
}


def _set(body: dict[str, Any], path: str, value: str) -> dict[str, Any]:
    node: Any = body
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


ACTIVITY_FIELDS = {
    "conversation.id": "dm-x", "from.id": "29:ada", "recipient.id": "28:bot", "id": "in-1", "replyToId": "1616",
    "conversation.tenantId": "t1", "channelData.tenant.id": "t1", "channelData.team.id": "19:team@thread.skype",
    "channelData.channel.id": CHANNEL, "from.aadObjectId": "aad-ada", "membersAdded.0.id": "29:bob",
    "membersRemoved.0.id": "29:bob",
}


def _examples(max_examples: int = 150) -> Any:
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))


def test_every_unsafe_character_in_every_id_field_of_notify_and_prices_is_a_400_naming_it(
    live: tuple[LiveBot, RawServer],
) -> None:
    bot, raw = live
    before = len(raw.requests)
    seen: set[str] = set()

    @_examples()
    @given(route=st.sampled_from(["notify", "prices"]), data=st.data(), char=unsafe, at=st.integers(0, 40))
    def check(route: str, data: st.DataObject, char: str, at: int) -> None:
        fields = NOTIFY_FIELDS if route == "notify" else PRICE_FIELDS
        name = data.draw(st.sampled_from(sorted(fields)))
        base = {"to.conversations.0": DM, "to.users.0": "29:ada", "dedupKey": "key-1", "product": "gadget",
                "source": "feed", "url": "item"}[name]
        answer = post_api(bot, f"/api/{route}", fields[name](spliced(base, char, at)))
        assert answer.status_code == 400, (name, repr(char), answer.text)
        assert answer.json()["error"]["field"] == name, answer.text
        seen.add(char)

    check()
    assert len(seen) > 40, "the generator must reach most of the characters"
    settle(bot)
    assert len(raw.requests) == before, "a refused request sends nothing"


def test_every_unsafe_character_in_every_id_field_of_an_activity_is_a_400_naming_it(
    live: tuple[LiveBot, RawServer],
) -> None:
    bot, raw = live
    before = len(raw.requests)
    fields_seen: set[str] = set()

    @_examples()
    @given(name=st.sampled_from(sorted(ACTIVITY_FIELDS)), char=unsafe, at=st.integers(0, 40),
           type_=st.sampled_from(["message", "conversationUpdate", "installationUpdate", "invoke"]))
    def check(name: str, char: str, at: int, type_: str) -> None:
        body = activity(raw.url, "dm-x", "personal", type_, text="help", replyToId="1616",
                        membersAdded=[{"id": "29:bob"}], membersRemoved=[{"id": "29:carl"}],
                        channelData={"tenant": {"id": "t1"}, "team": {"id": "19:team@thread.skype"},
                                     "channel": {"id": CHANNEL}})
        body["conversation"]["tenantId"] = "t1"
        body["from"]["aadObjectId"] = "aad-ada"
        _set(body, name, spliced(ACTIVITY_FIELDS[name], char, at))
        answer = post_activity(bot, body)
        assert answer.status_code == 400, (name, repr(char), answer.text)
        assert answer.json()["error"]["field"] == name, answer.text
        fields_seen.add(name)

    check()
    assert fields_seen == set(ACTIVITY_FIELDS)
    settle(bot)
    assert len(raw.requests) == before, "nothing is sent for a refused activity"


def test_free_text_with_line_breaks_and_controls_goes_out_in_the_body_only(live: tuple[LiveBot, RawServer]) -> None:
    """Text, where line breaks are legitimate: accepted, delivered, and never in a request line or header."""
    bot, raw = live
    before = len(raw.requests)
    sent: list[str] = []

    @_examples(max_examples=60)
    @given(char=unsafe, at=st.integers(0, 30), via=st.sampled_from(["notify", "turn"]))
    def check(char: str, at: int, via: str) -> None:
        n = next(_ids)  # a conversation and tenant of its own: Teams' rate limits never delay this send
        conversation, tenant = f"a:free-{n}", {"tenant": {"id": f"t-free-{n}"}}
        text = spliced(f"Line one {n}\r\nX-Evil: injected", char, at)
        if via == "notify":
            assert post_activity(bot, activity(raw.url, conversation, "personal", "conversationUpdate",
                                               channelData=tenant)).status_code == 200
            answer = post_api(bot, "/api/notify", {"to": {"conversations": [conversation]}, "text": text})
            assert answer.status_code == 202, answer.text
            sent.append(text)
        else:
            answer = post_activity(bot, activity(raw.url, conversation, "personal", text=text, channelData=tenant))
            assert answer.status_code == 200, answer.text

    check()
    settle(bot)
    bodies = [r.json() for r in raw.requests[before:]]
    delivered = {b.get("text") for b in bodies if isinstance(b, dict)}
    assert set(sent) <= delivered, "every notification went out, its text intact in the JSON body"
    assert len(raw.requests) - before > len(sent), "the turns' replies went out too"
    assert_clean_heads(raw)


def test_an_id_stored_before_this_check_is_refused_by_the_client_and_nothing_is_written(
    live: tuple[LiveBot, RawServer],
) -> None:
    """A database filled by an older release (or moved with state.transfer) may hold any id: the HTTP client
    itself refuses to write it, and the message fails instead of smuggling a second request."""
    bot, raw = live
    app = bot.app
    assert app is not None
    hostile = "a:old\r\nX-Evil: injected"
    before = len(raw.requests)

    async def seed() -> int:
        await app.references.upsert(ConversationRecord(
            conversation_id=hostile, channel_id="msteams", service_url=raw.url,
            reference={"conversation": {"id": hostile}, "bot": {"id": "28:bot"}, "serviceUrl": raw.url},
            tenant_id="t1", conversation_type="personal", user_id="29:old", bot_id="28:bot"), reactivate=True)
        [admission] = await app.proactive.enqueue([OutboxItem(
            payload={"type": "message", "text": "hi"}, conversation_id=hostile, tenant_id="t1",
            category="notification")])
        return admission.id

    row_id = bot.run(seed)
    settle(bot)
    row = bot.run(lambda: app.outbox.get(row_id))
    assert row is not None and row.status == "failed" and "InvalidRequest" in (row.last_error or ""), row
    assert len(raw.requests) == before
    assert_clean_heads(raw)


# ---- the HTTP client's own fence -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\r\n", "\x7f", "\x0b"])
@pytest.mark.parametrize("where", ["target", "header name", "header value", "method", "host"])
def test_the_client_refuses_a_request_that_would_split_a_line(bad: str, where: str) -> None:
    target, name, value, method, host = "/v3/conversations/a/activities", "x-ms-conversation-id", "a", "POST", "h"
    if where == "target":
        target += bad + "x"
    elif where == "header name":
        name = f"x{bad}y"
    elif where == "header value":
        value = f"a{bad}X-Evil: 1"
    elif where == "method":
        method = f"POST{bad}"
    else:
        host = f"h{bad}x"
    with pytest.raises(InvalidRequest):
        request_head(method, host, target, {name: value}, 0)


def test_a_tab_and_unicode_are_fine_in_a_header_value() -> None:
    head = request_head("POST", "h", "/x", {"x-ms-conversation-id": "29:ü\tꙮ"}, 2)
    assert head == "POST /x HTTP/1.1\r\nHost: h\r\nx-ms-conversation-id: 29:ü\tꙮ\r\nContent-Length: 2\r\n\r\n".encode()


async def test_the_pool_writes_not_a_byte_of_a_refused_request() -> None:
    async with RawServer() as raw:
        pool = ConnectionPool()
        try:
            for headers, path in (({"x-ms-conversation-id": "a\r\nX-Evil: 1"}, "v3/x"),
                                  ({"X-Evil\r\n": "1"}, "v3/x"), ({}, "v3/x HTTP/1.1\r\nX-Evil: 1\r\n\r\nGET /y")):
                with pytest.raises(InvalidRequest):
                    await pool.request("POST", raw.url, path, headers, b"{}")
            answer = await pool.request("POST", raw.url, "v3/conversations/a/activities", {"Accept": "a/b"}, b"{}")
            assert answer.status == 200
        finally:
            await pool.close()
        assert raw.connections == 1 and len(raw.requests) == 1, "only the good request was written"
        assert_clean_heads(raw)
