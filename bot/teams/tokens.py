"""The bot's own Bearer token for the Bot Connector: acquired asynchronously, cached, refreshed early.

Tokens come from azure-identity's async credentials (a fresh one per request, so only this module's
cache decides when a request is made) over the shared aiohttp session:
`ClientSecretCredential` against the authority and tenant of `ToChannelFromBotLoginUrl` (MultiTenant,
SingleTenant), or `ManagedIdentityCredential` with the app id as client id (UserAssignedMSI; it reads
App Service's IDENTITY_ENDPOINT / IDENTITY_HEADER). `ChannelTokens` adds what a bot needs around them:

- one request to the identity service at a time, however many sends want a token, bounded by a timeout;
- a send waits at most `wait_s` for a token; without one it gets `TokenUnavailable` (with when to try
  again) at once, so turns keep answering and outbox rows stay pending while the service is down or slow;
- a token close to expiry is refreshed in the background while the current one is still used;
- after a failure the next request waits an exponential backoff (capped), whatever the send rate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from azure.core.credentials import AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import AioHttpTransport
from azure.identity.aio import ClientSecretCredential, ManagedIdentityCredential

from bot.config import Config
from state.clock import Clock, backoff_s

from .connector import SharedSession

log = logging.getLogger(__name__)


class TokenUnavailable(Exception):
    """No token for the Bot Connector right now; `retry_after` seconds is when asking again makes sense."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = max(0.0, retry_after)


def token_unavailable_in(exc: BaseException) -> TokenUnavailable | None:
    """The TokenUnavailable behind `exc` (msrest or the SDK may wrap it), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TokenUnavailable):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class TokenCredential(Protocol):
    """What ChannelTokens needs of an azure-identity async credential."""

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # on the clock's monotonic scale
    refresh_at: float


def split_login_url(login_url: str) -> tuple[str, str]:
    """`https://login.microsoftonline.com/botframework.com` → (authority, tenant)."""
    parts = urlsplit(login_url)
    tenant = parts.path.strip("/").split("/")[0]
    return f"{parts.scheme}://{parts.netloc}", tenant


class ProxiedTransport(AioHttpTransport):
    """azure-core's aiohttp transport over the shared session, through the organisation's proxy for the URLs
    `bot/proxy.py` sends through one (the token endpoint, its discovery documents, a managed identity endpoint
    off the machine)."""

    def __init__(self, session: SharedSession) -> None:
        super().__init__(session=session.get(), session_owner=False)
        self._proxies = session.proxies

    async def send(self, request: Any, **config: Any) -> Any:
        proxy = self._proxies.for_url(request.url)
        if proxy is not None:
            config["proxy"] = proxy.url_with_credentials
        return await super().send(request, **config)


def credential_factory(config: Config, session: SharedSession) -> Callable[[], TokenCredential]:
    """Builds (on the running loop) the azure-identity credential the settings call for.

    ChannelTokens makes one per request to the identity service: caching, refresh times and retries are
    its job (on its injected clock), so the credential's own retries are off and its cache never decides."""

    def make() -> TokenCredential:
        transport = ProxiedTransport(session)
        if config.app_type == "UserAssignedMSI":
            return ManagedIdentityCredential(client_id=config.app_id, transport=transport, retry_total=0)
        authority, tenant = split_login_url(config.channel_login_url)
        return ClientSecretCredential(
            tenant, config.app_id, config.app_password, authority=authority, transport=transport, retry_total=0
        )

    return make


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ChannelTokens:
    """The bot's token for the Bot Connector (see the module docstring)."""

    def __init__(
        self,
        make_credential: Callable[[], TokenCredential],
        scope: str,
        clock: Clock,
        *,
        wait_s: float = 1.0,
        timeout_s: float = 10.0,
        refresh_margin_s: float = 300.0,
        retry_base_s: float = 2.0,
        retry_cap_s: float = 60.0,
        wall: Callable[[], float] = time.time,
        on_acquired: Callable[[bool], None] | None = None,
    ) -> None:
        self._make_credential = make_credential
        self._on_acquired = on_acquired  # told of every request to the identity service: got a token, or not
        self.scope = scope if scope.endswith("/.default") else scope.rstrip("/") + "/.default"
        self._clock = clock
        self._wait = wait_s
        self._timeout = timeout_s
        self._margin = refresh_margin_s
        self._retry_base = retry_base_s
        self._retry_cap = retry_cap_s
        self._wall = wall
        self._token: _Token | None = None
        self._task: asyncio.Task[_Token | None] | None = None
        self._failures = 0
        self._next_attempt = -math.inf
        self._last_error = ""
        self.refused = False  # the identity service's last answer refused the bot's credentials (400/401)

    async def token(self) -> str:
        """A valid token now, or TokenUnavailable after at most `wait_s`."""
        now = self._clock.monotonic()
        token = self._token
        if token is not None and now < token.expires_at:
            if now >= token.refresh_at:
                self._start()  # in the background: this send goes with the current token
            return token.value
        task = self._start()
        if task is None:
            raise TokenUnavailable(f"no token: {self._last_error}", self._next_attempt - now)
        try:
            fresh = await asyncio.wait_for(asyncio.shield(task), self._wait)
        except TimeoutError:
            raise TokenUnavailable("the identity service has not answered yet", self._retry_base) from None
        if fresh is None:
            raise TokenUnavailable(f"no token: {self._last_error}",
                                   self._next_attempt - self._clock.monotonic())
        return fresh.value

    @property
    def state(self) -> str:
        """For /healthz: ready, requesting, unavailable (why), or not requested yet."""
        token = self._token
        if token is not None and self._clock.monotonic() < token.expires_at:
            return "ready"
        if self._task is not None:
            return "requesting"
        return f"unavailable: {self._last_error}" if self._last_error else "not requested"

    def drop(self, stale: str | None) -> None:
        """Forget the cached token if it is `stale` (None: whatever is cached): Teams refused it."""
        if self._token is not None and (stale is None or self._token.value == stale):
            self._token = None

    def warm(self) -> None:
        """Start getting a token now (at start-up), so the first turn does not wait for it."""
        self._start()

    async def settle(self) -> None:
        """Wait until no request to the identity service is in flight."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _start(self) -> asyncio.Task[_Token | None] | None:
        if self._task is None and self._clock.monotonic() >= self._next_attempt:
            self._task = asyncio.create_task(self._acquire(), name="channel-token")
        return self._task

    async def _acquire(self) -> _Token | None:
        credential: TokenCredential | None = None
        try:
            try:
                credential = self._make_credential()
                async with asyncio.timeout(self._timeout):
                    info = await credential.get_token_info(self.scope)
            except TimeoutError:
                self._failed(f"the identity service did not answer within {self._timeout:g} s", auth=False)
            except ClientAuthenticationError as exc:  # any error answer; 400/401 mean the credentials are wrong
                status = getattr(getattr(exc, "response", None), "status_code", None)
                self._failed(_describe(exc), auth=status in (400, 401))
            except Exception as exc:  # connection errors, TLS errors, bad answers: all mean "no token yet"
                self._failed(_describe(exc), auth=False)
            else:
                return self._store(info)
            return None
        finally:
            self._task = None
            if credential is not None:
                await credential.close()

    def _store(self, info: AccessTokenInfo) -> _Token:
        wall, now = self._wall(), self._clock.monotonic()
        lifetime = max(0.0, info.expires_on - wall)
        refresh_in = lifetime - self._margin
        if info.refresh_on:
            refresh_in = min(refresh_in, info.refresh_on - wall)
        token = _Token(info.token, now + lifetime - min(30.0, lifetime / 10),
                       now + max(refresh_in, lifetime / 2))
        self._token = token
        if self._on_acquired is not None:
            self._on_acquired(True)
        if self._failures:
            log.info("got a Bot Connector token again after %d failed attempt(s)", self._failures)
        self._failures, self._next_attempt, self._last_error = 0, -math.inf, ""
        self.refused = False
        return token

    def _failed(self, reason: str, *, auth: bool) -> None:
        if self._on_acquired is not None:
            self._on_acquired(False)
        self._failures += 1
        delay = backoff_s(self._failures, self._retry_base, self._retry_cap)
        self._next_attempt = self._clock.monotonic() + delay
        self._last_error = reason
        self.refused = auth
        if auth:
            log.error("the identity service refused the bot's credentials (%s): check MicrosoftAppId, "
                      "MicrosoftAppPassword and ToChannelFromBotLoginUrl; sends wait and retry", reason)
        elif self._failures == 1:
            log.warning("cannot get a Bot Connector token (%s); sends wait and retry", reason)
        else:
            log.debug("still no Bot Connector token after %d attempts (%s)", self._failures, reason)
