"""The bot's Microsoft Graph tokens, one per customer tenant, by client credentials (or managed identity).

Graph acts inside an organisation, so its token comes from that tenant's authority
(`Config.graph_login_url`: the origin of `ToChannelFromBotLoginUrl` plus the tenant id) with the scope
`{GRAPH_URL}/.default`. Each tenant gets its own `ChannelTokens` (cached, refreshed early, one request at a
time, backoff after failures); with `UserAssignedMSI` the managed identity's token is for its own tenant
only, so other tenants get `TokenUnavailable`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from azure.identity.aio import ClientSecretCredential, ManagedIdentityCredential

from bot.config import Config
from state.clock import Clock

from .connector import SharedSession
from .tokens import ChannelTokens, ProxiedTransport, TokenCredential, TokenUnavailable, split_login_url


class GraphTokens:
    """`for_tenant(tenant).token()`: a Graph Bearer token for that tenant (see the module docstring)."""

    def __init__(self, config: Config, session: SharedSession, clock: Clock, *, max_tenants: int = 1000,
                 on_acquired: Callable[[bool], None] | None = None) -> None:
        self._config = config
        self._session = session
        self._clock = clock
        self._max = max_tenants
        self._on_acquired = on_acquired
        self.scope = f"{config.graph_url}/.default"
        self._tenants: OrderedDict[str, ChannelTokens] = OrderedDict()
        self._evicted: list[ChannelTokens] = []

    def for_tenant(self, tenant_id: str) -> ChannelTokens:
        tokens = self._tenants.get(tenant_id)
        if tokens is None:
            tokens = self._tenants[tenant_id] = ChannelTokens(self._factory(tenant_id), self.scope, self._clock,
                                                              on_acquired=self._on_acquired)
            if len(self._tenants) > self._max:  # least recently used: closed with the others on `close`
                self._evicted.append(self._tenants.popitem(last=False)[1])
        else:
            self._tenants.move_to_end(tenant_id)
        return tokens

    def _factory(self, tenant_id: str) -> Callable[[], TokenCredential]:
        config = self._config

        def make() -> TokenCredential:
            transport = ProxiedTransport(self._session)  # the shared session's TLS trust and proxy
            if config.app_type == "UserAssignedMSI":
                if tenant_id != config.app_tenant_id:
                    raise TokenUnavailable(f"the managed identity has no token for tenant {tenant_id}", 3600)
                return ManagedIdentityCredential(client_id=config.app_id, transport=transport, retry_total=0)
            authority, tenant = split_login_url(config.graph_login_url(tenant_id))
            return ClientSecretCredential(tenant, config.app_id, config.app_password, authority=authority,
                                          transport=transport, retry_total=0)

        return make

    async def close(self) -> None:
        for tokens in [*self._tenants.values(), *self._evicted]:
            await tokens.close()
        self._tenants.clear()
        self._evicted.clear()
