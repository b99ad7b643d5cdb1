"""The Bot Framework adapter and its authentication, built once, with connector clients reused across turns.

Inbound: the SDK's own `ConfigurationBotFrameworkAuthentication`, given the configured endpoints and
`required_endorsements=["msteams"]`, validates every JWT (issuer, audience = app id, expiry, signing key
endorsed for Teams, `serviceurl` = the activity's serviceUrl). Its signing keys come from memory
(`signing_keys.py`). `ReusingAuthentication` wraps it through its public interface and first refuses,
without any key lookup, what is not a channel token: other issuers would send the SDK to other metadata
URLs (emulator, skills), which it fetches with blocking calls in the turn.

Outbound: the stock SDK builds a new ConnectorClient (and synchronous MSAL credentials) for every turn;
`ReusingConnectorFactory` keeps one pooled client per service URL (`connector.py`), whose token comes from
`tokens.ChannelTokens`. `TeamsAdapter` sends a turn's replies through `replies.TurnReplies`: within Teams'
limits, as plain JSON, or through the outbox when they cannot go now (no slot within a second, no token,
429), so the turn still answers at once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from copy import copy
from typing import Any, Protocol

import jwt
from botbuilder.core import TurnContext
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity, ActivityTypes, DeliveryModes, ResourceResponse
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import (
    AuthenticateRequestResult,
    AuthenticationConfiguration,
    BotFrameworkAuthentication,
    ClaimsIdentity,
    ConnectorFactory,
    SkillValidation,
    UserTokenClient,
)
from botframework.connector.skills import BotFrameworkClient

from bot.config import Config

from .connector import BearerTokens, SharedSession, pooled_client

log = logging.getLogger(__name__)

TEAMS_CHANNEL = "msteams"


class ReusingConnectorFactory(ConnectorFactory):
    """A ConnectorFactory that returns the same client for the same service URL.

    The audience is always the channel's (`ToChannelFromBotOAuthScope`): this bot makes no skill calls."""

    def __init__(self, session: SharedSession, tokens: BearerTokens | None, max_clients: int = 256) -> None:
        self._session = session
        self._tokens = tokens
        self._clients: OrderedDict[str, ConnectorClient] = OrderedDict()
        self._max = max_clients

    async def create(self, service_url: str, audience: str | None = None) -> ConnectorClient:
        client = self._clients.get(service_url)
        if client is None:
            client = pooled_client(service_url, self._session, self._tokens)
            self._clients[service_url] = client
            if len(self._clients) > self._max:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(service_url)
        return client


def _app_id(claims: ClaimsIdentity) -> str:
    claims_map: dict[str, Any] = claims.claims or {}
    return str(claims_map.get("aud") or claims_map.get("appid") or "")


class ReusingAuthentication(BotFrameworkAuthentication):
    """Delegates validation to the SDK after refusing non-channel tokens; shares one connector factory."""

    def __init__(
        self,
        inner: BotFrameworkAuthentication,
        session: SharedSession,
        tokens: BearerTokens | None,
        *,
        token_issuer: str,
        auth_enabled: bool,
    ) -> None:
        self._inner = inner
        self.session = session
        self.tokens = tokens
        self._issuer = token_issuer
        self._auth_enabled = auth_enabled
        self._factory = ReusingConnectorFactory(session, tokens)
        self._token_clients: dict[str, UserTokenClient] = {}

    def _refuse_unless_channel_token(self, auth_header: str) -> None:
        """PermissionError unless the header carries a JWT from the channel's issuer (signature unchecked)."""
        if not self._auth_enabled:
            raise PermissionError("the bot runs without MicrosoftAppId and accepts no tokens")
        scheme, _, token = auth_header.partition(" ")
        if scheme != "Bearer" or not token.strip():
            raise PermissionError("the Authorization header is not a Bearer token")
        try:
            claims = jwt.decode(token.strip(), options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise PermissionError(f"the Bearer token is not a JWT ({exc})") from None
        issuer = claims.get("iss")
        if issuer != self._issuer:
            raise PermissionError(f"the token's issuer {issuer!r} is not the channel's ({self._issuer})")
        if SkillValidation.is_skill_claim(claims):
            raise PermissionError("skill tokens are not accepted")

    async def authenticate_request(self, activity: Activity, auth_header: str) -> AuthenticateRequestResult:
        header = auth_header.strip() if auth_header else None
        if header:
            self._refuse_unless_channel_token(header)
        result = await self._inner.authenticate_request(activity, header or None)
        result.connector_factory = self._factory
        return result

    async def authenticate_streaming_request(
        self, auth_header: str, channel_id_header: str
    ) -> AuthenticateRequestResult:
        self._refuse_unless_channel_token(auth_header or "")
        return await self._inner.authenticate_streaming_request(auth_header, channel_id_header)

    def create_connector_factory(self, claims_identity: ClaimsIdentity) -> ConnectorFactory:
        return self._factory

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
        self._refuse_unless_channel_token(auth_header or "")
        return await self._inner.authenticate_channel_request(auth_header)


def build_authentication(
    config: Config, session: SharedSession | None = None, tokens: BearerTokens | None = None
) -> ReusingAuthentication:
    sdk = ConfigurationBotFrameworkAuthentication(
        config.sdk_settings(), auth_configuration=AuthenticationConfiguration(required_endorsements=[TEAMS_CHANNEL])
    )
    return ReusingAuthentication(sdk, session or SharedSession(), tokens, token_issuer=config.token_issuer,
                                 auth_enabled=config.auth_enabled)


class ReplySender(Protocol):
    """Sends one reply of a turn, or hands it to the outbox (replies.TurnReplies)."""

    async def send(self, context: TurnContext, activity: Activity) -> ResourceResponse: ...


# handled by the SDK inside the turn: nothing goes to the Bot Connector for these
_LOCAL = {"delay", ActivityTypes.invoke_response, ActivityTypes.trace}


class TeamsTurnContext(TurnContext):
    """The SDK's TurnContext, except that `send_activities` copies each outgoing activity shallowly.

    The SDK deep-copies every activity it sends (its card included) so that the conversation reference it
    stamps on the copy never reaches the caller's object. The stamp sets top-level fields only, and nothing in
    this bot (no send middleware) changes an activity's nested parts once it is sent, so a shallow copy keeps
    that guarantee; the deep copy of a help card was a tenth of a turn's CPU. `expectReplies` turns keep the
    SDK's path."""

    async def send_activities(self, activities: list[Activity]) -> list[ResourceResponse]:
        if self.activity.delivery_mode == DeliveryModes.expect_replies:
            return await super().send_activities(activities)
        reference = TurnContext.get_conversation_reference(self.activity)
        output = [_stamped(TurnContext.apply_conversation_reference(copy(activity), reference))
                  for activity in activities]

        async def logic() -> list[ResourceResponse]:
            responses: list[ResourceResponse] = await self.adapter.send_activities(self, output)
            if any(activity.type != ActivityTypes.trace for activity in output):
                self.responded = True
            return responses

        result: list[ResourceResponse] = await self._emit(self._on_send_activities, output, logic())
        return result


def _stamped(activity: Activity) -> Activity:
    """What the SDK's send does to each copy: a type, an input hint, no id."""
    activity.type = activity.type or ActivityTypes.message
    activity.input_hint = activity.input_hint or "acceptingInput"
    activity.id = None
    return activity


class TeamsAdapter(CloudAdapter):
    """The SDK's CloudAdapter, except that a turn's replies go through `replies` (see the module docstring)
    and its turn contexts are `TeamsTurnContext`s."""

    def __init__(self, authentication: BotFrameworkAuthentication) -> None:
        super().__init__(authentication)
        self.replies: ReplySender | None = None

    def _create_turn_context(self, activity: Activity, *args: Any) -> TurnContext:
        base = super()._create_turn_context(activity, *args)
        context = TeamsTurnContext(base)
        context.turn_state.update(base.turn_state)
        return context

    async def send_activities(self, context: TurnContext, activities: list[Activity]) -> list[ResourceResponse]:
        if self.replies is None:
            return await super().send_activities(context, activities)
        responses: list[ResourceResponse] = []
        for activity in activities:
            if activity.type in _LOCAL:
                responses.extend(await super().send_activities(context, [activity]))
            else:
                activity.id = None
                responses.append(await self.replies.send(context, activity))
        return responses
