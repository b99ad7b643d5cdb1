"""The bot's Bearer token for one call to the Bot Connector: only where it belongs, renewed once on a 401, and
sending paused (nothing lost) while Teams keeps refusing it.

`ConnectorCredentials` stands between the connectors (`connector.JsonConnector`, the SDK's pooled clients) and
`tokens.ChannelTokens`:

- **Where.** `token_for(service_url)` hands the token out only for https URLs whose host is on
  `SERVICE_URL_HOSTS` (`bot/service_urls.py`); anything else raises `ServiceUrlRefused` (logged once per host,
  counted) and the caller sends nothing.
- **A 401.** The connector asks `renewed(stale)`: the cached token is dropped and a fresh one fetched from the
  identity service, and the call is made once more. A second 401 is `answered(refused=True)`: Teams refuses
  the bot's credentials (a rotated secret, a changed registration).
- **Paused.** From then on `token_for` raises `TokenUnavailable` (the sender's "retry later, no attempt used"),
  so rows stay pending and turns' replies go to the outbox; `problems()` makes /healthz answer 503 with
  `credentials refused`, and a metric counts each refusal. After a backoff (5 s doubling to 5 min) one call is let
  through as a probe with a fresh token; the first answer that is not a 401 resumes sending, by itself.
  The identity service refusing the secret (400/401: rotated there, not yet here) also shows as
  `credentials refused` on /healthz; sends wait for a token meanwhile (`tokens.ChannelTokens`), lose nothing, and
  go once the operator has set the new secret and restarted.
"""

from __future__ import annotations

import logging

from bot.metrics import Metrics
from bot.service_urls import ServiceUrlHosts, ServiceUrlRefused
from state.clock import Clock, backoff_s

from .tokens import ChannelTokens, TokenUnavailable

log = logging.getLogger(__name__)

CREDENTIALS_REFUSED = "credentials refused"


class ConnectorCredentials:
    """See the module docstring. `hosts` None: no allow-list (tests of the token alone)."""

    def __init__(self, tokens: ChannelTokens, hosts: ServiceUrlHosts | None, clock: Clock, *,
                 metrics: Metrics | None = None, probe_base_s: float = 5.0, probe_cap_s: float = 300.0) -> None:
        self.tokens = tokens
        self.hosts = hosts
        self._clock = clock
        self._metrics = metrics or Metrics()
        self._probe_base, self._probe_cap = probe_base_s, probe_cap_s
        self._paused = False
        self._refusals = 0  # consecutive 401-after-a-fresh-token answers
        self._probe_at = 0.0
        self._probing = False
        self._detail = ""

    @property
    def paused(self) -> bool:
        return self._paused

    async def token_for(self, service_url: str) -> str:
        """The token to call `service_url` with; ServiceUrlRefused or TokenUnavailable instead (see above)."""
        if self.hosts is not None:
            reason = self.hosts.refusal(service_url)
            if reason is not None:
                self._refuse_url(service_url, reason)
        if not self._paused:
            return await self.tokens.token()
        now = self._clock.monotonic()
        if self._probing or now < self._probe_at:
            raise TokenUnavailable(f"{CREDENTIALS_REFUSED} by Teams (401: {self._detail}); sending paused",
                                   max(1.0, self._probe_at - now))
        self._probing = True  # this call is the probe; the cached token was refused, so it gets a fresh one
        self.tokens.drop(None)
        try:
            return await self.tokens.token()
        except BaseException:
            self._probing = False
            raise

    async def renewed(self, stale: str) -> str:
        """A fresh token after Teams answered 401 to `stale`."""
        self.tokens.drop(stale)
        return await self.tokens.token()

    def answered(self, *, refused: bool, detail: str = "") -> float:
        """Teams answered a call (after the renewal, if there was one): 401 (`refused`) or anything else.
        Returns how long sending is paused (0 when it is not)."""
        if not refused:
            if self._paused:
                log.info("Teams accepts the bot's credentials again; sending resumes")
            self._paused, self._probing, self._refusals = False, False, 0
            return 0.0
        self._metrics.credentials_refused()
        self._refusals += 1
        self._detail = detail[:200]
        delay = backoff_s(self._refusals, self._probe_base, self._probe_cap)
        self._probe_at = self._clock.monotonic() + delay
        self._probing = False
        if not self._paused:
            log.error("Teams refused the bot's credentials twice, with a fresh token (401: %s): sending paused, "
                      "nothing is lost; check MicrosoftAppId, MicrosoftAppPassword and the Azure Bot registration. "
                      "The bot probes again with backoff and resumes by itself", self._detail)
        self._paused = True
        return delay

    def unanswered(self) -> None:
        """A call got no answer (timeout, connection failure): a probe in flight may be tried again."""
        self._probing = False

    def problems(self) -> list[str]:
        """For /healthz: why sending cannot work now (Teams, or the identity service, refuses the credentials)."""
        if self._paused:
            return [f"{CREDENTIALS_REFUSED}: Teams answers 401 to the bot's token ({self._detail})"]
        if self.tokens.refused:
            return [f"{CREDENTIALS_REFUSED}: the identity service refuses the bot's credentials "
                    f"({self.tokens.state.removeprefix('unavailable: ')})"]
        return []

    def _refuse_url(self, service_url: str, reason: str) -> None:
        self._metrics.service_url_refused("outbound")
        if self.hosts is not None and self.hosts.first_refusal(service_url):
            log.warning("not sending to %s: %s (the bot's token goes only to SERVICE_URL_HOSTS)",
                        service_url[:200], reason)
        raise ServiceUrlRefused(service_url, reason)
