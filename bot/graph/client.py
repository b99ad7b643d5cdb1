"""The Graph calls that reach people who never installed the bot (v1.0, application permissions).

- the app's id in an organisation's catalog, looked up once per tenant by the manifest id (`externalId`);
- install the app for a user (`POST /users/{id}/teamwork/installedApps`; 409 = already installed);
- that installation's id, and the chat between the bot and the user (`…/installedApps/{id}/chat`);
- one page of a group's transitive members who are users (`GET /groups/{id}/transitiveMembers/microsoft.graph.user`,
  paged by `@odata.nextLink`, which is followed only when it points back into GRAPH_URL).

Every call carries a token of the user's tenant (`tokens(tenant).token()`). Ids are checked to be GUIDs
before they reach a URL. Errors are `GraphError` with Graph's status, code and `Retry-After` (seconds);
nothing here sleeps or retries: the caller decides when to try again (`retryable`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
RETRYABLE = frozenset({429, 500, 502, 503, 504})


def is_guid(value: str) -> bool:
    return bool(GUID.fullmatch(value))


class BearerTokens(Protocol):
    async def token(self) -> str: ...


class GraphError(Exception):
    """Graph answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    @property
    def retryable(self) -> bool:
        """Throttled, unavailable or unreachable: try again (after `retry_after` when Graph gave one)."""
        return self.status in RETRYABLE or self.status == 0


def _check(name: str, value: str) -> str:
    if not is_guid(value):
        raise ValueError(f"{name} must be a GUID, got {value[:80]!r}")
    return value


class GraphClient:
    """See the module docstring. `session()` gives the shared aiohttp session (its TLS trust and proxy)."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession], tokens: Callable[[str], BearerTokens],
                 graph_url: str, *, timeout_s: float = 20.0,
                 proxy_for: Callable[[str], dict[str, Any]] | None = None,
                 on_answer: Callable[[str, int], None] | None = None) -> None:
        """`on_answer(op, status)` is told of every answer (status 0: none), e.g. for metrics."""
        self._on_answer = on_answer
        self._session = session
        self._proxy = proxy_for(graph_url) if proxy_for is not None else {}  # SharedSession.proxy_for: HTTPS_PROXY
        self._tokens = tokens
        self.base = graph_url.rstrip("/") + "/v1.0/"
        self._timeout = timeout_s
        self._catalog: dict[str, str] = {}

    async def catalog_app_id(self, tenant_id: str, external_id: str) -> str | None:
        """The app's id in the tenant's catalog (None when the organisation has not published it); cached."""
        _check("externalId", external_id)
        known = self._catalog.get(tenant_id)
        if known:
            return known
        answer = await self._call("GET", tenant_id, "appCatalogs/teamsApps",
                                  params={"$filter": f"externalId eq '{external_id}'"})
        apps = answer.get("value")
        for app in apps if isinstance(apps, list) else []:
            if isinstance(app, dict) and isinstance(app.get("id"), str) and app["id"]:
                self._catalog[tenant_id] = app["id"]
                return str(app["id"])
        return None

    async def install_for_user(self, tenant_id: str, user_id: str, catalog_app_id: str) -> bool:
        """Install the app in the user's personal scope: True when installed now, False when it already was."""
        _check("user id", user_id)
        bind = f"{self.base}appCatalogs/teamsApps/{quote(catalog_app_id, safe='')}"
        try:
            await self._call("POST", tenant_id, f"users/{user_id}/teamwork/installedApps",
                             body={"teamsApp@odata.bind": bind})
        except GraphError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def installation(self, tenant_id: str, user_id: str, catalog_app_id: str) -> str | None:
        """The id of the app's installation for the user, None when it is not installed."""
        _check("user id", user_id)
        answer = await self._call("GET", tenant_id, f"users/{user_id}/teamwork/installedApps",
                                  params={"$expand": "teamsApp",
                                          "$filter": f"teamsApp/id eq '{catalog_app_id}'"})
        for entry in answer.get("value") or []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                return str(entry["id"])
        return None

    async def installation_chat(self, tenant_id: str, user_id: str, installation_id: str) -> str:
        """The chat id of the bot's 1:1 with the user (Teams' personal conversation)."""
        _check("user id", user_id)
        answer = await self._call(
            "GET", tenant_id, f"users/{user_id}/teamwork/installedApps/{quote(installation_id, safe='')}/chat")
        chat = answer.get("id")
        if not isinstance(chat, str) or not chat:
            raise GraphError(502, "NoChat", "Graph returned no chat id")
        return chat

    async def group_members_page(self, tenant_id: str, group_id: str, next_link: str | None = None
                                 ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the users in a group, through nested groups: (users, the next page's link or None)."""
        _check("group id", group_id)
        if next_link:
            if not next_link.startswith(self.base + f"groups/{group_id}/transitiveMembers/"):
                raise GraphError(502, "BadNextLink", "Graph's @odata.nextLink leaves the group's members")
            answer = await self._call("GET", tenant_id, next_link.removeprefix(self.base))
        else:
            answer = await self._call("GET", tenant_id, f"groups/{group_id}/transitiveMembers/microsoft.graph.user",
                                      params={"$select": "id,displayName,userType,accountEnabled", "$top": "999"})
        users = [u for u in answer.get("value") or [] if isinstance(u, dict) and isinstance(u.get("id"), str)]
        link = answer.get("@odata.nextLink")
        return users, link if isinstance(link, str) and link else None

    async def _call(self, method: str, tenant_id: str, path: str, *, params: dict[str, str] | None = None,
                    body: dict[str, Any] | None = None) -> dict[str, Any]:
        _check("tenant id", tenant_id)
        try:
            token = await self._tokens(tenant_id).token()
        except Exception as exc:  # no token yet (the identity service is down, slow, or refuses): try again later
            raise GraphError(0, "TokenUnavailable", str(exc), getattr(exc, "retry_after", None)) from exc
        try:
            async with asyncio.timeout(self._timeout):
                headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
                async with self._session().request(method, self.base + path, params=params, json=body,
                                                   headers=headers, **self._proxy) as response:
                    raw = await response.read()
                    status, retry_after = response.status, response.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            if self._on_answer is not None:
                self._on_answer(path.split("?")[0].split("/")[-1], 0)
            raise GraphError(0, type(exc).__name__, str(exc) or "Graph did not answer") from exc
        if self._on_answer is not None:
            self._on_answer(path.split("?")[0].split("/")[-1], status)
        if status >= 300:
            raise _error(status, raw, retry_after)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {}
        return answer if isinstance(answer, dict) else {}


def _error(status: int, raw: bytes, retry_after: str | None) -> GraphError:
    code, message = f"HTTP{status}", f"Graph answered {status}"
    try:
        error = json.loads(raw).get("error") if raw else None
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)[:500]
    try:
        wait = max(0.0, float(retry_after)) if retry_after is not None else None
    except ValueError:
        wait = None
    return GraphError(status, code, message, wait)
