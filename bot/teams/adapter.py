"""The Bot Framework adapter, built once, with connector clients reused across turns.

The stock SDK builds a new ConnectorClient (and a new user-token client) for every inbound turn; msrest's
client constructor is most of a turn's CPU, and its sends queue for the default thread pool.
`ReusingAuthentication` wraps the SDK's own `BotFrameworkAuthentication` through its public interface
and hands out connector factories that keep one pooled client (see `connector.py`) per (app id,
service URL, audience). Credentials are the SDK's, so token refresh is as before.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import (
    AuthenticateRequestResult,
    BotFrameworkAuthentication,
    ClaimsIdentity,
    ConnectorFactory,
    UserTokenClient,
)
from botframework.connector.skills import BotFrameworkClient

from bot.config import Config

from .connector import SharedSession, pooled_client

log = logging.getLogger(__name__)


class ReusingConnectorFactory(ConnectorFactory):
    """A ConnectorFactory that returns the same client for the same service URL and audience."""

    def __init__(self, inner: ConnectorFactory, session: SharedSession, max_clients: int = 256) -> None:
        self._inner = inner
        self._session = session
        self._clients: OrderedDict[tuple[str, str | None], ConnectorClient] = OrderedDict()
        self._max = max_clients

    async def create(self, service_url: str, audience: str | None = None) -> ConnectorClient:
        key = (service_url, audience)
        client = self._clients.get(key)
        if client is None:
            client = pooled_client(await self._inner.create(service_url, audience), self._session,
                                   self._session.on_token)
            self._clients[key] = client
            if len(self._clients) > self._max:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(key)
        return client


def _app_id(claims: ClaimsIdentity) -> str:
    claims_map: dict[str, Any] = claims.claims or {}
    return str(claims_map.get("aud") or claims_map.get("appid") or "")


class ReusingAuthentication(BotFrameworkAuthentication):
    """Delegates authentication to the SDK; caches what it builds per bot app id."""

    def __init__(self, inner: BotFrameworkAuthentication, session: SharedSession | None = None) -> None:
        self._inner = inner
        self.session = session or SharedSession()
        self._factories: dict[str, ReusingConnectorFactory] = {}
        self._token_clients: dict[str, UserTokenClient] = {}

    def _factory(self, claims: ClaimsIdentity, make: ConnectorFactory | None = None) -> ReusingConnectorFactory:
        app_id = _app_id(claims)
        factory = self._factories.get(app_id)
        if factory is None:
            factory = ReusingConnectorFactory(make or self._inner.create_connector_factory(claims), self.session)
            self._factories[app_id] = factory
        return factory

    async def authenticate_request(self, activity: Activity, auth_header: str) -> AuthenticateRequestResult:
        result = await self._inner.authenticate_request(activity, auth_header)
        if result.connector_factory is not None:
            result.connector_factory = self._factory(result.claims_identity, result.connector_factory)
        return result

    async def authenticate_streaming_request(
        self, auth_header: str, channel_id_header: str
    ) -> AuthenticateRequestResult:
        return await self._inner.authenticate_streaming_request(auth_header, channel_id_header)

    def create_connector_factory(self, claims_identity: ClaimsIdentity) -> ConnectorFactory:
        return self._factory(claims_identity)

    async def create_user_token_client(self, claims_identity: ClaimsIdentity) -> UserTokenClient:
        app_id = _app_id(claims_identity)
        client = self._token_clients.get(app_id)
        if client is None:
            client = await self._inner.create_user_token_client(claims_identity)
            self._token_clients[app_id] = client
        return client

    def create_bot_framework_client(self) -> BotFrameworkClient:
        return self._inner.create_bot_framework_client()

    def get_originating_audience(self) -> str:
        return self._inner.get_originating_audience()

    async def authenticate_channel_request(self, auth_header: str) -> ClaimsIdentity:
        return await self._inner.authenticate_channel_request(auth_header)


def build_authentication(config: Config) -> ReusingAuthentication:
    return ReusingAuthentication(ConfigurationBotFrameworkAuthentication(config.sdk_settings()))


def build_adapter(authentication: BotFrameworkAuthentication) -> CloudAdapter:
    return CloudAdapter(authentication)
