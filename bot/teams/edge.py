"""The SDK side of the application, built in two steps by `bot/app.py`.

`TeamsConnection` (HTTP session and TLS trust, the bot's token, the channel's signing keys,
authentication, adapter, proactive sender, roster) comes first, because the delivery worker needs its
sender; `turns()` then builds the bot states and the activity handler on top of the domain objects and
returns what POST /api/messages runs. `start()` loads the signing keys and starts getting a token before
the bot accepts HTTP; `close()` releases them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from botbuilder.core import (
    ConversationState,
    MessageFactory,
    Storage,
    TurnContext,
    UserState,
)
from botbuilder.dialogs import Dialog

from bot.config import Config
from bot.delivery.proactive import ProactiveMessages
from bot.metrics import Metrics
from bot.notices.acknowledge import Acknowledgements
from bot.prices.alert_actions import AlertActions
from bot.service_urls import ServiceUrlHosts
from bot.tls import trust_context
from bot.turn_gate import TurnGate
from scheduler.scheduler import Scheduler
from state.availability import is_unavailable, reason
from state.clock import Clock
from state.engagement import Engagement
from state.preferences import Preferences
from state.processed import ProcessedActivities
from state.references import ConversationReferences

from .adapter import TeamsAdapter, build_authentication
from .alert_buttons import AlertButtons
from .connector import JsonConnector, SharedSession
from .credentials import ConnectorCredentials
from .dialog_state import DialogStackState
from .graph_tokens import GraphTokens
from .handler import ProactiveBot
from .replies import QueuedReplies, ReplySlots, TurnReplies
from .roster import TeamsRoster
from .sender import TeamsSender
from .signing_keys import ChannelSigningKeys
from .tokens import ChannelTokens, credential_factory
from .turns import DatabaseAway, SdkTurns

log = logging.getLogger(__name__)


class TeamsConnection:
    """Authentication, the CloudAdapter, and the outbound calls the rest of the bot uses."""

    def __init__(self, config: Config, clock: Clock, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self._clock = clock
        self.session = SharedSession(ssl_context=trust_context(config.ca_files), proxies=config.proxies)
        self.tokens: ChannelTokens | None = None
        self.credentials: ConnectorCredentials | None = None  # the token, only where it belongs, paused on 401s
        self.service_urls: ServiceUrlHosts | None = None  # SERVICE_URL_HOSTS (auth on only)
        self.signing_keys: ChannelSigningKeys | None = None
        self.graph_tokens: GraphTokens | None = None
        if config.auth_enabled:
            self.graph_tokens = GraphTokens(config, self.session, clock)
            self.tokens = ChannelTokens(credential_factory(config, self.session), config.oauth_scope, clock,
                                        on_acquired=self.metrics.token_acquired)
            self.signing_keys = ChannelSigningKeys(config.open_id_metadata_url, self.session, clock)
        if self.tokens is not None:
            self.service_urls = ServiceUrlHosts(config.service_url_hosts)
            self.credentials = ConnectorCredentials(self.tokens, self.service_urls, clock, metrics=self.metrics)
        self.authentication = build_authentication(config, self.session, self.credentials)
        self.adapter = TeamsAdapter(self.authentication)
        self.adapter.on_turn_error = self._on_turn_error
        self.sender = TeamsSender(self.authentication, config.app_id)
        self.roster = TeamsRoster(self.adapter, config.app_id)

    def turns(
        self,
        storage: Storage,
        *,
        bot_name: str,
        references: ConversationReferences,
        dialog: Dialog,
        engagement: Engagement,
        proactive: ProactiveMessages,
        scheduler: Scheduler,
        welcome_team_members: bool,
        alert_actions: AlertActions,
        reply_slots: ReplySlots,
        preferences: Preferences | None = None,
        turn_gate: TurnGate | None = None,
        acknowledgements: Acknowledgements | None = None,
        processed: ProcessedActivities | None = None,
        reached: Callable[[str, str], Awaitable[bool]] | None = None,
    ) -> SdkTurns:
        """The activity handler over `storage`, wrapped as the /api/messages turn processor."""
        bot = ProactiveBot(
            bot_name=bot_name,
            references=references,
            conversation_state=ConversationState(storage),
            user_state=UserState(storage),
            dialog_state=DialogStackState(storage),
            dialog=dialog,
            engagement=engagement,
            proactive=proactive,
            scheduler=scheduler,
            welcome_team_members=welcome_team_members,
            alert_buttons=AlertButtons(alert_actions),
            preferences=preferences,
            turn_gate=turn_gate,
            acknowledgements=acknowledgements,
            processed=processed,
            reached=reached,
        )
        self.adapter.replies = TurnReplies(JsonConnector(self.session, self.credentials, timeout_s=10.0), reply_slots,
                                           QueuedReplies(proactive, self._clock))
        return SdkTurns(self.adapter, self.authentication, bot)

    def graph_tokens_for(self, tenant_id: str) -> ChannelTokens:
        """The Graph token source of a tenant (bot/graph's client asks it per call)."""
        if self.graph_tokens is None:
            raise RuntimeError("Graph needs MicrosoftAppId and its credentials")
        return self.graph_tokens.for_tenant(tenant_id)

    def status(self) -> dict[str, object]:
        """For /healthz: whether requests are authenticated, the bot's token, the channel's signing keys."""
        if self.tokens is None or self.signing_keys is None:
            return {"authentication": "off"}
        return {"authentication": "on", "token": self.tokens.state, "signing_keys": self.signing_keys.count}

    def problems(self) -> list[str]:
        """For /healthz: why sending to Teams cannot work now (Teams refuses the bot's credentials)."""
        return self.credentials.problems() if self.credentials is not None else []

    async def start(self) -> None:
        """Start getting the bot's token, and load the channel's signing keys (waiting a few seconds at most)."""
        if self.tokens is not None:
            self.tokens.warm()
        if self.signing_keys is not None:
            await self.signing_keys.start()

    async def close(self) -> None:
        if self.signing_keys is not None:
            await self.signing_keys.stop()
        if self.tokens is not None:
            await self.tokens.close()
        if self.graph_tokens is not None:
            await self.graph_tokens.close()
        await self.session.close()

    async def _on_turn_error(self, turn_context: TurnContext, exc: Exception) -> None:
        if is_unavailable(exc):  # not the turn's fault: answer 503 so Teams sends it again (turns.SdkTurns)
            log.debug("turn not processed: the database is unavailable", exc_info=exc)
            raise DatabaseAway(reason(exc)) from exc
        self.metrics.turn_failed(str(turn_context.activity.type or ""))
        await _on_turn_error(turn_context, exc)


async def _on_turn_error(turn_context: TurnContext, exc: Exception) -> None:
    log.error(
        "turn failed in conversation %s (%s): %s",
        turn_context.activity.conversation.id if turn_context.activity.conversation else "?",
        turn_context.activity.type,
        exc,
        exc_info=exc,
    )
    if turn_context.activity.type == "message":
        try:
            await turn_context.send_activity(
                MessageFactory.text("Sorry, something went wrong on my side. Please try again.")
            )
        except Exception:  # the channel may be what failed; the error is already logged
            log.warning("could not tell the user about the failed turn", exc_info=True)
