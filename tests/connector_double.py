"""A test double of the Teams Bot Connector service (the `serviceUrl` a bot sends to), over real HTTP.

Serves the v3 routes botframework-connector 4.17 calls (send, reply, update, delete, create conversation,
members, paged members, team details and channels), records every request, enforces Teams' throttling
windows on an injectable clock, and plays scripted faults (error statuses, held requests).

In a test::

    async with ConnectorDouble(throttling=True, clock=fake_clock.monotonic) as double:
        ...  # point the bot at double.url
        request = await double.wait_for(lambda r: r.op == "reply")

As a separate process (benchmarks)::

    python tests/connector_double.py --port 8123 [--throttle] [--tenant-rps 50]

The request path is kept cheap (no copies of bodies, O(1) window checks) so one core serves >1,000 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import signal
import ssl
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

Json = dict[str, Any]
Window = tuple[float, int]  # (seconds, max requests in any such sliding window)

MAX_MESSAGE_BYTES = 28 * 1024
MESSAGE_OPS = frozenset({"send", "reply", "update", "delete"})
MEMBER_OPS = frozenset(
    {"get_member", "get_members", "get_paged_members", "get_conversations", "team_details", "team_channels"}
)


@dataclass(frozen=True)
class Limits:
    """Teams' published throttling windows; `tenant` is per app per tenant over all conversations."""

    send: tuple[Window, ...] = ((1, 7), (2, 8), (30, 60), (3600, 1800))
    create: tuple[Window, ...] = ((1, 7), (2, 8), (30, 60), (3600, 1800))
    members: tuple[Window, ...] = ((1, 14), (2, 16), (30, 120), (3600, 3600))
    conversation_all_bots: tuple[Window, ...] = ((1, 14), (2, 16))
    tenant: tuple[Window, ...] = ((1, 50),)


@dataclass(frozen=True)
class Fault:
    """A scripted answer. `hold_seconds` set means "timeout": hold the request, then answer normally."""

    status: int
    code: str = ""
    message: str = "scripted fault"
    retry_after: float | None = None
    hold_seconds: float | None = None


FAULTS: dict[str, Fault] = {
    "bad_argument": Fault(400, "BadArgument", "Bad argument (scripted)"),
    "bot_not_registered": Fault(401, "BotNotRegistered", "Bot not registered (scripted)"),
    "blocked_by_user": Fault(403, "ConversationBlockedByUser", "User blocked the conversation with the bot."),
    "not_in_roster": Fault(
        403, "BotNotInConversationRoster", "The bot is not part of the conversation roster."
    ),
    "disabled_by_admin": Fault(403, "BotDisabledByAdmin", "The tenant admin disabled this bot."),
    "forbidden_operation": Fault(
        403, "ForbiddenOperationException", "Bot is not installed in user's personal scope"
    ),
    "not_found": Fault(404, "ConversationNotFound", "Conversation not found."),
    "precondition_failed": Fault(412, "PreconditionFailed", "Conflicting concurrent operations."),
    "too_big": Fault(413, "MessageSizeTooBig", "Message size too large."),
    "throttled": Fault(429, "Throttled", "Too many requests (scripted)", retry_after=1),
    "server_error": Fault(500, "ServiceError", "Internal service error (scripted)"),
    "bad_gateway": Fault(502, "BadGateway", "Bad gateway (scripted)"),
    "service_unavailable": Fault(503, "ServiceUnavailable", "Service unavailable (scripted)"),
    "gateway_timeout": Fault(504, "GatewayTimeout", "Gateway timeout (scripted)"),
    "timeout": Fault(200, hold_seconds=math.inf),
}
_FAULT_BY_STATUS = {f.status: f for f in FAULTS.values() if f.hold_seconds is None and f.status != 403}


@dataclass(slots=True, eq=False)
class RecordedRequest:
    """One request as the double saw it. `status`/`response` stay None while it is in flight."""

    seq: int
    method: str
    path: str
    op: str
    conversation_id: str | None
    activity_id: str | None
    body: Any
    headers: Mapping[str, str]
    time: float
    size: int
    query_string: str = ""
    status: int | None = None
    response: Any = None
    held: bool = False

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string))


@dataclass(slots=True)
class _Conversation:
    id: str
    tenant_id: str | None = None
    members: dict[str, Json] = field(default_factory=dict)
    activities: dict[str, Json] = field(default_factory=dict)


@dataclass(slots=True)
class _Script:
    fault: Fault
    remaining: int | None  # None: until cleared
    conversation_id: str | None
    ops: Collection[str] | None


class _Reject(Exception):
    """Raised inside a handler to answer with a Teams error body."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def error_response(status: int, code: str, message: str, retry_after: float | None = None) -> web.Response:
    """A response in the connector's error shape, with Retry-After (whole seconds) when given."""
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class ConnectorDouble:
    """The Bot Connector service, in-process or as its own process; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        throttling: bool = False,
        limits: Limits | None = None,
        tenant_rps: int | None = None,
        size_limit: bool = False,
        latency: float = 0.0,
        max_hold: float = 30.0,
        max_records: int | None = None,
        strict_activities: bool = True,
    ) -> None:
        limits = limits or Limits()
        if tenant_rps is not None:
            limits = replace(limits, tenant=((1, tenant_rps),))
        self.clock = clock
        self.throttling = throttling  # switch: enforce `limits`
        self.limits = limits
        self.size_limit = size_limit  # switch: 413 for message bodies over 28 KB
        self.latency = latency  # seconds added to every request
        self.conversation_latency: dict[str, float] = {}  # per-conversation override of `latency`
        self.max_hold = max_hold  # longest real time a "timeout" fault holds a request
        self.strict_activities = strict_activities  # update/delete of an unknown activity id -> 404
        self.url = ""  # the serviceUrl, "http://127.0.0.1:PORT/", once started
        self.accepts_token: Callable[[str], bool] | None = None  # set: 401 for an Authorization it refuses
        self.requests: deque[RecordedRequest] = deque(maxlen=max_records)
        self.ops: Counter[str] = Counter()  # requests per operation
        self.statuses: Counter[int] = Counter()  # answers per HTTP status
        self.throttled: Counter[str] = Counter()  # 429s per refusing window, e.g. "per tenant: 50 per 1s"
        self.conversations: dict[str, _Conversation] = {}
        self.teams: dict[str, Json] = {}
        self.require_install = False  # switch: creating a 1:1 with someone who lacks the app answers 403
        self.installed: set[tuple[str, str]] = set()  # (tenant, user) with the app in their personal scope
        self._rostered: set[tuple[str, str]] = set()  # (tenant, id or aadObjectId) on a roster of that tenant
        self._one_to_one: dict[tuple[str, str, str], str] = {}
        self._scripts: list[_Script] = []
        self._windows: dict[tuple[Any, ...], deque[float]] = {}
        self._waiters: list[tuple[Callable[[RecordedRequest], bool], asyncio.Future[RecordedRequest]]] = []
        self._release: asyncio.Event | None = None
        self._held = 0
        self._seq = itertools.count(1)
        self._ids = itertools.count(1_700_000_000_001)
        self._runner: web.AppRunner | None = None

    # ---- seeding -------------------------------------------------------------------------------------

    def add_conversation(
        self, conversation_id: str, tenant_id: str | None = None, members: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        """Make a conversation known (with its tenant and roster); existing ones are updated."""
        conversation = self._conversation(conversation_id)
        conversation.tenant_id = tenant_id or conversation.tenant_id
        for member in members:
            self.add_member(conversation_id, member)

    def add_member(self, conversation_id: str, member: Mapping[str, Any]) -> None:
        """Add a roster entry (a TeamsChannelAccount dict with at least "id") to a conversation or team."""
        if not member.get("id"):
            raise ValueError("a member needs an 'id'")
        conversation = self._conversation(conversation_id)
        conversation.members[str(member["id"])] = dict(member)
        tenant = conversation.tenant_id or str(member.get("tenantId") or "")
        for key in (member.get("id"), member.get("aadObjectId")):
            if key:
                self._rostered.add((tenant, str(key)))

    def install(self, tenant_id: str, user_id: str, bot_id: str) -> str:
        """The app is installed for `user_id` (as Graph's install does): creates no longer answer 403; returns
        the id of the bot's 1:1 chat with them (what Teams' installationUpdate names)."""
        self.installed.add((tenant_id, user_id))
        key = (bot_id, tenant_id, user_id)
        conversation_id = self._one_to_one.get(key) or f"a:double-{len(self._one_to_one) + 1}"
        self._one_to_one[key] = conversation_id
        self._conversation(conversation_id).tenant_id = tenant_id
        return conversation_id

    def add_team(
        self,
        team_id: str,
        name: str = "Team",
        channels: Iterable[Mapping[str, Any]] = (),
        tenant_id: str | None = None,
        **details: Any,
    ) -> None:
        """Make a team known to GET /v3/teams/{id}[/conversations]; roster: `add_member(team_id, ...)`."""
        self.add_conversation(team_id, tenant_id)
        channel_list = [dict(c) for c in channels] or [{"id": team_id, "name": "General"}]
        self.teams[team_id] = {"id": team_id, "name": name, "channels": channel_list, **details}

    # ---- switches ------------------------------------------------------------------------------------

    def fail_next(
        self,
        fault: str | int | Fault,
        count: int | None = 1,
        *,
        conversation_id: str | None = None,
        ops: Collection[str] | None = None,
        hold_seconds: float | None = None,
    ) -> None:
        """Answer the next `count` matching requests (None: all until `clear_faults`) with `fault`.

        `fault` is a FAULTS name ("blocked_by_user", "timeout", ...), an HTTP status, or a Fault.
        Scripts match by conversation id (None: any) and operation name (None: any); a request takes the
        first matching script. "timeout" holds the request until `release_held()` or `hold_seconds`.
        """
        if isinstance(fault, str):
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
            fault = FAULTS[fault]
        elif isinstance(fault, int):
            fault = _FAULT_BY_STATUS.get(fault) or Fault(fault, "Error", f"HTTP {fault} (scripted)")
        if hold_seconds is not None:
            fault = Fault(fault.status, fault.code, fault.message, fault.retry_after, hold_seconds)
        if count is not None and count < 1:
            raise ValueError("count must be at least 1 (or None for until cleared)")
        unknown = set(ops or ()) - MESSAGE_OPS - MEMBER_OPS - {"create"}
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}")
        self._scripts.append(_Script(fault, count, conversation_id, ops))

    def hold_next(
        self,
        count: int | None = 1,
        *,
        conversation_id: str | None = None,
        ops: Collection[str] | None = None,
        seconds: float | None = None,
    ) -> None:
        """Hold the next matching requests open (a "timeout") until `release_held()` or `seconds`."""
        self.fail_next("timeout", count, conversation_id=conversation_id, ops=ops, hold_seconds=seconds)

    def release_held(self) -> None:
        """Let every currently held request go on to be answered normally."""
        if self._release is not None:
            self._release.set()
            self._release = None

    def clear_faults(self) -> None:
        self._scripts.clear()

    @property
    def held_count(self) -> int:
        """Requests being held right now."""
        return self._held

    @property
    def throttled_count(self) -> int:
        return sum(self.throttled.values())

    @property
    def last_seq(self) -> int:
        """The seq of the newest recorded request (0 if none): pass as `since` to wait for newer ones."""
        return self.requests[-1].seq if self.requests else 0

    # ---- accessors -----------------------------------------------------------------------------------

    def find(
        self, op: str | None = None, conversation_id: str | None = None, status: int | None = None
    ) -> list[RecordedRequest]:
        """Recorded requests, oldest first, filtered by operation, conversation and answer status."""
        return [
            r
            for r in self.requests
            if (op is None or r.op == op)
            and (conversation_id is None or r.conversation_id == conversation_id)
            and (status is None or r.status == status)
        ]

    def sent_activities(self, conversation_id: str | None = None, type: str | None = None) -> list[Json]:
        """Bodies of send/reply requests that were accepted (2xx), oldest first; `type` e.g. "message"."""
        return [
            r.body
            for r in self.requests
            if r.op in ("send", "reply")
            and r.status is not None
            and r.status < 300
            and (conversation_id is None or r.conversation_id == conversation_id)
            and (type is None or r.body.get("type") == type)
        ]

    def activity(self, conversation_id: str, activity_id: str) -> Json | None:
        """The current version of an activity the bot sent (after updates), or None if unknown/deleted."""
        conversation = self.conversations.get(conversation_id)
        return conversation.activities.get(activity_id) if conversation else None

    async def wait_for(
        self, predicate: Callable[[RecordedRequest], bool], timeout: float = 5.0, since: int = 0
    ) -> RecordedRequest:
        """The first request with seq > `since` matching `predicate`, waiting (event-driven) if none yet.

        Requests are offered to the predicate on arrival (status None), when held, and when answered.
        `timeout` only guards against a hang; nothing here polls.
        """
        for request in self.requests:
            if request.seq > since and predicate(request):
                return request
        future: asyncio.Future[RecordedRequest] = asyncio.get_running_loop().create_future()
        waiter = (lambda r: r.seq > since and predicate(r), future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            seen = ", ".join(f"{r.method} {r.path} -> {r.status}" for r in list(self.requests)[-5:])
            raise TimeoutError(
                f"no matching connector request within {timeout}s; last seen: {seen}"
            ) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def stats(self) -> Json:
        return {
            "requests": sum(self.ops.values()),
            "ops": dict(self.ops),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "throttled": dict(self.throttled),
            "held": self._held,
        }

    # ---- lifecycle -----------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        conv = "/v3/conversations/{conversationId}"
        routes: list[tuple[str, str, str]] = [
            ("POST", "/v3/conversations", "create"),
            ("GET", "/v3/conversations", "get_conversations"),
            ("POST", conv + "/activities", "send"),
            ("POST", conv + "/activities/{activityId}", "reply"),
            ("PUT", conv + "/activities/{activityId}", "update"),
            ("DELETE", conv + "/activities/{activityId}", "delete"),
            ("GET", conv + "/members", "get_members"),
            ("GET", conv + "/members/{memberId}", "get_member"),
            ("GET", conv + "/pagedmembers", "get_paged_members"),
            ("GET", "/v3/teams/{conversationId}", "team_details"),
            ("GET", "/v3/teams/{conversationId}/conversations", "team_channels"),
        ]
        for method, path, op in routes:
            app.router.add_route(method, path, self._route(op))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/_double/stats", self._stats)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None,
                    name: str | None = None) -> str:
        """Serve on `host:port` (0: a free port), over TLS with `ssl_context`; returns and sets `url` (with
        `name` for the host in it when given, e.g. a name only a test proxy resolves)."""
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://{name or host}:{bound}/"
        return self.url

    async def stop(self) -> None:
        self.release_held()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ConnectorDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---- request pipeline ----------------------------------------------------------------------------

    def _route(self, op: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, op)

        return handle

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _handle(self, request: web.Request, op: str) -> web.StreamResponse:
        raw = await request.read() if request.body_exists else b""
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        info = request.match_info
        record = RecordedRequest(
            next(self._seq),
            request.method,
            request.path,
            op,
            info.get("conversationId"),
            info.get("activityId"),
            body,
            request.headers,
            self.clock(),
            len(raw),
            request.query_string,
        )
        self.requests.append(record)
        self.ops[op] += 1
        self._notify(record)
        try:
            status, payload = await self._answer(record, bad_json, info)
            response = (
                web.Response(status=status) if payload is None else web.json_response(payload, status=status)
            )
        except _Reject as reject:
            response = error_response(reject.status, reject.code, reject.message, reject.retry_after)
            payload = {"error": {"code": reject.code, "message": reject.message}}
        record.status, record.response = response.status, payload
        self.statuses[response.status] += 1
        self._notify(record)
        return response

    async def _answer(
        self, record: RecordedRequest, bad_json: bool, info: Mapping[str, str]
    ) -> tuple[int, Any]:
        delay = self.conversation_latency.get(record.conversation_id or "", self.latency)
        if delay > 0:
            await asyncio.sleep(delay)
        if self.accepts_token is not None and not self.accepts_token(record.authorization or ""):
            raise _Reject(401, "BotNotRegistered", "Authorization has been denied for this request.")
        if self._scripts:
            fault = self._take_fault(record)
            if fault is not None and fault.hold_seconds is not None:
                await self._hold(record, fault.hold_seconds)
            elif fault is not None:
                raise _Reject(fault.status, fault.code, fault.message, fault.retry_after)
        if bad_json:
            raise _Reject(400, "BadArgument", "The request body is not valid JSON")
        if record.op in MESSAGE_OPS and record.op != "delete":
            if not isinstance(record.body, dict) or not record.body.get("type"):
                raise _Reject(400, "BadArgument", "The activity is missing or has no 'type'")
            if self.size_limit and record.size > MAX_MESSAGE_BYTES:
                raise _Reject(413, "MessageSizeTooBig", f"Message of {record.size} bytes exceeds 28 KB")
        if record.op == "create":
            return self._create(record)
        if self.throttling:
            self._admit(
                record,
                self._conversation(record.conversation_id)
                if record.op in MESSAGE_OPS
                else self.conversations.get(record.conversation_id or ""),
            )
        operation: Callable[[RecordedRequest, Mapping[str, str]], tuple[int, Any]]
        operation = getattr(self, "_op_" + record.op)
        return operation(record, info)

    def _take_fault(self, record: RecordedRequest) -> Fault | None:
        for index, script in enumerate(self._scripts):
            if (script.conversation_id is None or script.conversation_id == record.conversation_id) and (
                script.ops is None or record.op in script.ops
            ):
                if script.remaining is not None:
                    script.remaining -= 1
                    if script.remaining == 0:
                        del self._scripts[index]
                return script.fault
        return None

    async def _hold(self, record: RecordedRequest, seconds: float) -> None:
        if self._release is None:
            self._release = asyncio.Event()
        release = self._release
        record.held = True
        self._held += 1
        self._notify(record)
        try:
            await asyncio.wait_for(release.wait(), min(seconds, self.max_hold))
        except TimeoutError:
            pass
        finally:
            self._held -= 1

    def _notify(self, record: RecordedRequest) -> None:
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                if predicate(record):
                    future.set_result(record)
            except Exception as exc:  # a broken predicate fails the test, not the server
                future.set_exception(exc)

    # ---- throttling ----------------------------------------------------------------------------------

    def _admit(self, record: RecordedRequest, conversation: _Conversation | None, op_class: str = "") -> None:
        """Refuse with 429 if any window is full; otherwise count the request in every window."""
        op_class = op_class or ("send" if record.op in MESSAGE_OPS else "members")
        body = record.body if isinstance(record.body, dict) else {}
        bot = (body.get("from") or body.get("bot") or {}).get("id") or record.headers.get("Authorization", "")
        limits = self.limits
        checks: list[tuple[tuple[Any, ...], tuple[Window, ...], str]] = [
            (
                (op_class, bot, record.conversation_id),
                getattr(limits, op_class),
                f"{op_class} per bot per conversation",
            ),
        ]
        if op_class == "send":
            checks.append(
                (
                    ("all_bots", record.conversation_id),
                    limits.conversation_all_bots,
                    "send per conversation (all bots)",
                )
            )
        tenant = (conversation.tenant_id if conversation else None) or _tenant_of(body)
        if conversation is not None and conversation.tenant_id is None:
            conversation.tenant_id = tenant
        if tenant:
            checks.append((("tenant", tenant), limits.tenant, "per tenant"))
        now = self.clock()
        stamps_list = []
        for key, windows, label in checks:
            stamps = self._windows.get(key)
            if stamps is None:
                stamps = self._windows[key] = deque()
            horizon = now - max(seconds for seconds, _ in windows)
            while stamps and stamps[0] <= horizon:
                stamps.popleft()
            for seconds, limit in windows:
                if len(stamps) >= limit and stamps[-limit] > now - seconds:
                    message = f"{label}: {limit} per {seconds:g}s"
                    self.throttled[message] += 1
                    raise _Reject(429, "Throttled", message, stamps[-limit] + seconds - now)
            stamps_list.append(stamps)
        for stamps in stamps_list:
            stamps.append(now)

    # ---- operations ----------------------------------------------------------------------------------

    def _conversation(self, conversation_id: str | None) -> _Conversation:
        key = conversation_id or ""
        conversation = self.conversations.get(key)
        if conversation is None:
            conversation = self.conversations[key] = _Conversation(key)
        return conversation

    def _known(self, conversation_id: str | None) -> _Conversation:
        conversation = self.conversations.get(conversation_id or "")
        if conversation is None:
            raise _Reject(404, "ConversationNotFound", f"Conversation {conversation_id!r} not found")
        return conversation

    def _store(self, conversation_id: str | None, activity: Json) -> str:
        activity_id = str(next(self._ids))
        self._conversation(conversation_id).activities[activity_id] = activity
        return activity_id

    def _op_send(self, record: RecordedRequest, info: Mapping[str, str]) -> tuple[int, Json]:
        return 201, {"id": self._store(record.conversation_id, record.body)}

    _op_reply = _op_send

    def _op_update(self, record: RecordedRequest, info: Mapping[str, str]) -> tuple[int, Json]:
        activities = self._conversation(record.conversation_id).activities
        activity_id = record.activity_id or ""
        if self.strict_activities and activity_id not in activities:
            raise _Reject(404, "ActivityNotFound", f"Activity {activity_id!r} not found in the conversation")
        activities[activity_id] = record.body
        return 200, {"id": activity_id}

    def _op_delete(self, record: RecordedRequest, info: Mapping[str, str]) -> tuple[int, None]:
        activities = self._conversation(record.conversation_id).activities
        if activities.pop(record.activity_id or "", None) is None and self.strict_activities:
            raise _Reject(
                404, "ActivityNotFound", f"Activity {record.activity_id!r} not found in the conversation"
            )
        return 200, None

    def _create(self, record: RecordedRequest) -> tuple[int, Json]:
        body = record.body
        if not isinstance(body, dict):
            raise _Reject(400, "BadArgument", "Conversation parameters are missing")
        members = body.get("members") or []
        if (
            body.get("isGroup")
            or len(members) != 1
            or not isinstance(members[0], dict)
            or not members[0].get("id")
        ):
            raise _Reject(
                400, "BadArgument", "A bot can only create a 1:1 conversation with exactly one member id"
            )
        tenant = _tenant_of(body)
        if not tenant:
            raise _Reject(400, "BadArgument", "tenantId (or channelData.tenant.id) is required")
        bot = str((body.get("bot") or {}).get("id") or "")
        user = str(members[0]["id"])
        key = (bot, tenant, user)
        conversation_id = self._one_to_one.get(key) or f"a:double-{len(self._one_to_one) + 1}"
        record.conversation_id = f"1:1:{bot}:{tenant}:{user}"
        if self.throttling:  # a create's window is the 1:1's (the same pair, the same chat), refused or not
            self._admit(record, None, "create")
        record.conversation_id = conversation_id
        if self.require_install and (tenant, user) not in self.installed and (tenant, user) not in self._rostered:
            record.conversation_id = None  # no conversation came of it (its window counted the would-be one's)
            raise _Reject(403, "ForbiddenOperationException", "Bot is not installed in user's personal scope")
        self._one_to_one[key] = conversation_id
        conversation = self._conversation(conversation_id)
        conversation.tenant_id = tenant
        conversation.members.setdefault(user, {**members[0], "tenantId": tenant})
        result: Json = {"id": conversation_id}
        if self.url:
            result["serviceUrl"] = self.url
        if isinstance(body.get("activity"), dict):
            result["activityId"] = self._store(conversation_id, body["activity"])
        return 201, result

    def _op_get_members(self, record: RecordedRequest, info: Mapping[str, str]) -> tuple[int, list[Json]]:
        return 200, list(self._known(record.conversation_id).members.values())

    def _op_get_member(self, record: RecordedRequest, info: Mapping[str, str]) -> tuple[int, Json]:
        member = self._known(record.conversation_id).members.get(info["memberId"])
        if member is None:
            raise _Reject(404, "MemberNotFoundInConversation", f"Member {info['memberId']!r} not found")
        return 200, member

    def _op_get_paged_members(self, record: RecordedRequest, info: Mapping[str, str]) -> tuple[int, Json]:
        members = list(self._known(record.conversation_id).members.values())
        query = record.query
        try:
            size = min(500, int(query.get("pageSize") or 100))
            start = int((query.get("continuationToken") or "page:0").removeprefix("page:"))
        except ValueError:
            raise _Reject(400, "BadArgument", "pageSize or continuationToken is malformed") from None
        if size < 1 or not 0 <= start <= len(members):
            raise _Reject(400, "BadArgument", "pageSize or continuationToken is out of range")
        page: Json = {"members": members[start : start + size]}
        if start + size < len(members):
            page["continuationToken"] = f"page:{start + size}"
        return 200, page

    def _op_get_conversations(self, record: RecordedRequest, info: Mapping[str, str]) -> tuple[int, Json]:
        return 200, {"conversations": [{"id": c.id, "members": []} for c in self.conversations.values()]}

    def _op_team_details(self, record: RecordedRequest, info: Mapping[str, str]) -> tuple[int, Json]:
        team = self._team(record.conversation_id)
        details = {k: v for k, v in team.items() if k != "channels"}
        details.setdefault("channelCount", len(team["channels"]))
        details.setdefault("memberCount", len(self._conversation(team["id"]).members))
        return 200, details

    def _op_team_channels(self, record: RecordedRequest, info: Mapping[str, str]) -> tuple[int, Json]:
        return 200, {"conversations": self._team(record.conversation_id)["channels"]}

    def _team(self, team_id: str | None) -> Json:
        team = self.teams.get(team_id or "")
        if team is None:
            raise _Reject(404, "NotFound", f"Team {team_id!r} not found")
        return team


def _tenant_of(body: Json) -> str | None:
    """The tenant id an activity or conversation-parameters body names, wherever the SDK put it."""
    tenant = ((body.get("channelData") or {}).get("tenant") or {}).get("id")
    tenant = tenant or body.get("tenantId") or body.get("tenantID")  # the SDK writes "tenantID"
    if not tenant:
        conversation = body.get("conversation") or {}
        tenant = conversation.get("tenantId") or conversation.get("tenantID")
    return str(tenant) if tenant else None


async def serve(double: ConnectorDouble, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; prints the serviceUrl once the port is bound."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await double.start(host, port)
    print(f"connector double listening on {double.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await double.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the double as its own process (for benchmarks)."""
    parser = argparse.ArgumentParser(description="Teams Bot Connector test double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port (printed on start)")
    parser.add_argument("--throttle", action="store_true", help="enforce Teams' throttling windows")
    parser.add_argument("--tenant-rps", type=int, default=50, help="per-tenant requests per second")
    parser.add_argument("--size-limit", action="store_true", help="answer 413 for message bodies over 28 KB")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--max-records", type=int, default=10_000, help="requests kept in memory")
    args = parser.parse_args(argv)
    double = ConnectorDouble(
        throttling=args.throttle,
        tenant_rps=args.tenant_rps,
        size_limit=args.size_limit,
        latency=args.latency,
        max_records=args.max_records,
    )
    asyncio.run(serve(double, args.host, args.port))


if __name__ == "__main__":
    main()
