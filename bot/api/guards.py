"""The HTTP side of `bot/access.py`: Bearer token gates per API, and the loopback-Host rule of local mode."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.access import bearer_matches, loopback_host

from .errors import error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenGate:
    """One Bearer token guarding one API (`variable` names its setting in the answers).

    Unset: the API answers 503 (it is off), or, with `open_when_unset`, anyone may call it (only /metrics on a
    loopback HOST or with ALLOW_OPEN_METRICS=true: the config refuses the rest)."""

    def __init__(self, token: str, variable: str, api: str, *, open_when_unset: bool = False) -> None:
        self._token = token
        self._variable = variable
        self._api = api
        self._open = open_when_unset and not token

    @property
    def open(self) -> bool:
        return self._open

    def allows(self, request: web.Request) -> bool:
        return self._open or bearer_matches(request.headers.get("Authorization", ""), self._token)

    def refuse(self, request: web.Request) -> web.Response | None:
        """None when the request may proceed, else the answer to give (503 off, 401 wrong or missing token)."""
        if self.allows(request):
            return None
        if not self._token:
            return error(503, f"{self._api}Disabled", f"the {self._api.lower()} API is off: set {self._variable}")
        return error(401, "Unauthorized", f"missing or wrong Bearer token ({self._variable})",
                     **{"WWW-Authenticate": "Bearer"})


@web.middleware
async def loopback_hosts_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Local mode (no MicrosoftAppId): answer only requests whose Host names this machine, so a web page
    cannot reach the unauthenticated bot through DNS rebinding."""
    if not loopback_host(request.headers.get("Host")):
        return web.json_response({"error": {
            "code": "HostNotAllowed", "field": "Host",
            "message": "without MicrosoftAppId the bot answers only requests to localhost, 127.0.0.1 or [::1]"}},
            status=403)
    return await handler(request)
