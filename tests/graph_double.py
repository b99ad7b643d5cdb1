"""A test double of Microsoft Graph's Teams app installation API, over real TLS.

One HTTPS server (certificate from its own `trustme` CA, PEM at `ca_file`) serving the v1.0 routes the bot
calls to reach people who never installed it:

- `GET /v1.0/appCatalogs/teamsApps?$filter=externalId eq '<manifest id>'` (the organisation's catalog);
- `POST /v1.0/users/{id}/teamwork/installedApps` (`{"teamsApp@odata.bind": ".../appCatalogs/teamsApps/{id}"}`):
  201, or 409 when it is already installed;
- `GET /v1.0/users/{id}/teamwork/installedApps?$expand=teamsApp&$filter=teamsApp/id eq '{id}'`;
- `GET /v1.0/users/{id}/teamwork/installedApps/{installation id}/chat`;
- `GET /v1.0/groups/{id}/transitiveMembers/microsoft.graph.user?$select=…` (op "members"): the users of a group
  (`GraphTenant.groups`: its users, plus those of its nested groups, `GraphTenant.nested`), `group_page` a
  page, paged by `@odata.nextLink` (`$skiptoken`); `throttle_members_at` answers one page 429 once.

Every request needs a Bearer token from the identity double (`IdentityDouble.decode_access_token`): signed
by it, for Graph's audience (`audience`), of a tenant this double knows; the user must belong to that tenant
(404 otherwise). A tenant whose admin has not consented answers 403. Installs are throttled as Graph
publishes (30 per second per app per tenant: 429 with Retry-After) on an injectable clock, and `fail_next`
scripts answers (429 with Retry-After, 503, 403, ...). `on_install(tenant, user, chat id)` is awaited after an
install, so a test can play Teams' events (the installationUpdate the bot then receives).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import ssl
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import trustme
from aiohttp import web

from tests.identity_double import IdentityDouble

_FILTER_EXTERNAL = re.compile(r"^externalId eq '([^']*)'$")
_FILTER_APP = re.compile(r"^teamsApp/id eq '([^']*)'$")
_BIND = re.compile(r"/v1\.0/appCatalogs/teamsApps/([^/]+)$")
OnInstall = Callable[[str, str, str], Awaitable[None]]


@dataclass
class GraphTenant:
    """One organisation: its users, whether its admin consented, its catalog (manifest id → catalog id)."""

    users: set[str] = field(default_factory=set)
    consented: bool = True
    catalog: dict[str, str] = field(default_factory=dict)
    installed: dict[str, str] = field(default_factory=dict)  # user → installation id
    groups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # group → its direct users (Graph's users)
    nested: dict[str, list[str]] = field(default_factory=dict)  # group → its member groups

    def transitive(self, group: str, seen: set[str] | None = None) -> list[dict[str, Any]]:
        """A group's users through nested groups, each once (as Graph's transitiveMembers lists them)."""
        seen = seen if seen is not None else set()
        if group in seen:
            return []
        seen.add(group)
        users = list(self.groups.get(group, []))
        for inner in self.nested.get(group, []):
            users += self.transitive(inner, seen)
        return list({u["id"]: u for u in users}.values())


@dataclass
class GraphRequest:
    op: str
    method: str
    path: str
    query: dict[str, str]
    body: Any
    tenant: str | None
    status: int | None = None


class GraphDouble:
    """See the module docstring. Use as `async with GraphDouble(tmp_path, identity) as graph:`."""

    def __init__(self, directory: Path, identity: IdentityDouble, *, audience: str | None = None,
                 clock: Callable[[], float] = time.monotonic, installs_per_second: int = 30,
                 latency: float = 0.0) -> None:
        self.identity = identity
        self.audience = audience or ""  # empty: its own URL (what the bot's GRAPH_URL is set to)
        self.clock = clock
        self.installs_per_second = installs_per_second
        self.latency = latency
        self.ca = trustme.CA()
        self.ca_file = str(directory / "graph-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.url = ""
        self.tenants: dict[str, GraphTenant] = {}
        self.requests: list[GraphRequest] = []
        self.ops: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.throttled = 0
        self.group_page = 100
        self.throttle_members_at: int | None = None  # once: 429 (Retry-After `members_retry_after`) for this page
        self.members_retry_after = 30.0
        self.on_install: OnInstall | None = None
        self._faults: list[tuple[str, int, str, float | None, int]] = []  # (op, status, code, retry_after, left)
        self._windows: dict[str, deque[float]] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # ---- seeding and switches ----------------------------------------------------------------------

    def add_tenant(self, tenant: str, users: Any = (), *, consented: bool = True,
                   catalog: dict[str, str] | None = None) -> GraphTenant:
        entry = self.tenants.setdefault(tenant, GraphTenant())
        entry.users.update(users)
        entry.consented = consented
        entry.catalog.update(catalog or {})
        return entry

    def fail_next(self, op: str, status: int, count: int = 1, *, code: str = "", retry_after: float | None = None
                  ) -> None:
        """Answer the next `count` requests of `op` ("install", "catalog", "installations", "chat")."""
        self._faults.append((op, status, code or f"HTTP{status}", retry_after, count))

    def installs(self, status: int | None = None) -> list[GraphRequest]:
        return [r for r in self.requests if r.op == "install" and (status is None or r.status == status)]

    async def wait_for(self, predicate: Callable[[GraphDouble], bool], timeout: float = 10.0) -> None:
        async def watch() -> None:
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(watch(), timeout)

    # ---- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> GraphDouble:
        app = web.Application()
        app.router.add_get("/v1.0/appCatalogs/teamsApps", self._route("catalog", self._catalog))
        app.router.add_post("/v1.0/users/{user}/teamwork/installedApps", self._route("install", self._install))
        app.router.add_get("/v1.0/users/{user}/teamwork/installedApps", self._route("installations",
                                                                                  self._installations))
        app.router.add_get("/v1.0/users/{user}/teamwork/installedApps/{installation}/chat",
                           self._route("chat", self._chat))
        app.router.add_get("/v1.0/groups/{group}/transitiveMembers/microsoft.graph.user",
                           self._route("members", self._members))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost", "*.example.test").configure_cert(context)  # proxy tests
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.url = f"https://127.0.0.1:{self._runner.addresses[0][1]}"
        self.audience = self.audience or self.url
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- handlers -------------------------------------------------------------------------------------

    def _route(self, op: str, handler: Callable[[GraphRequest, web.Request, GraphTenant], Awaitable[web.Response]]
               ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            body: Any = None
            if request.can_read_body:
                try:
                    body = await request.json()
                except ValueError:
                    body = "<not json>"
            record = GraphRequest(op, request.method, request.path, dict(request.query), body, None)
            self.requests.append(record)
            self.ops[op] += 1
            if self.latency:
                await asyncio.sleep(self.latency)
            response = await self._answer(record, request, handler)
            record.status = response.status
            self.statuses[response.status] += 1
            self._changed.set()
            return response

        return handle

    async def _answer(self, record: GraphRequest, request: web.Request,
                      handler: Callable[[GraphRequest, web.Request, GraphTenant], Awaitable[web.Response]]
                      ) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return _error(401, "InvalidAuthenticationToken", "Access token is empty.")
        try:
            claims = self.identity.decode_access_token(token, self.audience)
        except jwt.InvalidTokenError as exc:
            return _error(401, "InvalidAuthenticationToken", f"Access token validation failure: {exc}")
        record.tenant = str(claims.get("tid"))
        tenant = self.tenants.get(record.tenant)
        if tenant is None:
            return _error(401, "InvalidAuthenticationToken", "Unknown tenant.")
        fault = self._fault(record.op)
        if fault is not None:
            return fault
        if not tenant.consented:
            return _error(403, "Forbidden", "Missing role permissions on the request. API requires one of "
                          "'TeamsAppInstallation.ReadWriteSelfForUser.All'.")
        user = request.match_info.get("user")
        if user is not None and user not in tenant.users:
            return _error(404, "NotFound", f"User {user} not found in the tenant.")
        return await handler(record, request, tenant)

    def _fault(self, op: str) -> web.Response | None:
        for index, (fault_op, status, code, retry_after, left) in enumerate(self._faults):
            if fault_op == op:
                if left <= 1:
                    del self._faults[index]
                else:
                    self._faults[index] = (fault_op, status, code, retry_after, left - 1)
                if status == 429:
                    self.throttled += 1
                return _error(status, code, "scripted", retry_after)
        return None

    async def _catalog(self, record: GraphRequest, request: web.Request, tenant: GraphTenant) -> web.Response:
        match = _FILTER_EXTERNAL.match(request.query.get("$filter", ""))
        if match is None:
            return _error(400, "BadRequest", "Invalid filter clause")
        found = tenant.catalog.get(match.group(1))
        value = [{"id": found, "externalId": match.group(1), "distributionMethod": "organization"}] if found else []
        return web.json_response({"value": value})

    async def _install(self, record: GraphRequest, request: web.Request, tenant: GraphTenant) -> web.Response:
        now = self.clock()
        window = self._windows.setdefault(record.tenant or "", deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.installs_per_second:
            self.throttled += 1
            return _error(429, "TooManyRequests", "Too many requests", window[0] + 1.0 - now)
        window.append(now)
        bind = record.body.get("teamsApp@odata.bind") if isinstance(record.body, dict) else None
        match = _BIND.search(bind or "") if isinstance(bind, str) else None
        if match is None or match.group(1) not in tenant.catalog.values():
            return _error(400, "BadRequest", "teamsApp@odata.bind does not name an app of the catalog")
        user = request.match_info["user"]
        if user in tenant.installed:
            return _error(409, "Conflict", "App is already installed.")
        tenant.installed[user] = f"installation-{next(self._ids)}"
        if self.on_install is not None:
            await self.on_install(record.tenant or "", user, self.chat_id(user))
        return web.Response(status=201)

    async def _installations(self, record: GraphRequest, request: web.Request, tenant: GraphTenant
                             ) -> web.Response:
        match = _FILTER_APP.match(request.query.get("$filter", ""))
        if match is None or match.group(1) not in tenant.catalog.values():
            return web.json_response({"value": []})
        user = request.match_info["user"]
        installed = tenant.installed.get(user)
        value = [{"id": installed, "teamsApp": {"id": match.group(1)}}] if installed else []
        return web.json_response({"value": value})

    async def _chat(self, record: GraphRequest, request: web.Request, tenant: GraphTenant) -> web.Response:
        user = request.match_info["user"]
        if tenant.installed.get(user) != request.match_info["installation"]:
            return _error(404, "NotFound", "Installation not found.")
        return web.json_response({"id": self.chat_id(user), "chatType": "oneOnOne"})

    async def _members(self, record: GraphRequest, request: web.Request, tenant: GraphTenant) -> web.Response:
        group = request.match_info["group"]
        if group not in tenant.groups and group not in tenant.nested:
            return _error(404, "Request_ResourceNotFound", f"Resource '{group}' does not exist.")
        users = tenant.transitive(group)
        start = int(request.query.get("$skiptoken", "0"))
        if self.throttle_members_at == start:
            self.throttle_members_at = None
            self.throttled += 1
            return _error(429, "TooManyRequests", "Too many requests", self.members_retry_after)
        page = users[start:start + self.group_page]
        body: dict[str, Any] = {"value": [{"@odata.type": "#microsoft.graph.user", **u} for u in page]}
        if start + self.group_page < len(users):
            body["@odata.nextLink"] = (f"{self.url}/v1.0/groups/{group}/transitiveMembers/microsoft.graph.user"
                                       f"?$select=id,displayName,userType,accountEnabled"
                                       f"&$skiptoken={start + self.group_page}")
        return web.json_response(body)

    @staticmethod
    def chat_id(user: str) -> str:
        return f"19:{user}_bot@unq.gbl.spaces"


def _error(status: int, code: str, message: str, retry_after: float | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)
