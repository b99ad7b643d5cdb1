"""The application factory and its ordered lifecycle.

start: open the database (migrating it), get the Teams identity ready, start background work, then accept HTTP.
stop:  stop accepting, let in-flight turns finish, stop background work, close the database.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from dialogs.main_dialog import MainDialog
from scheduler.clock import Clock, SystemClock
from scheduler.ratelimit import TeamsRateLimiter
from scheduler.scheduler import Scheduler
from scheduler.sendqueue import SendQueue
from state.analyses import AnalysisStore
from state.db import connect
from state.engagement import Engagement
from state.outbox import OutboxStore
from state.preferences import Preferences
from state.prices import PriceLog
from state.references import ConversationReferences
from state.storage import DatabaseStorage
from state.watches import WatchStore

from .analyses.service import AnalysisService
from .api.messages import MessagesEndpoint
from .api.notify import NotifyEndpoints
from .api.prices import PricesEndpoint
from .api.routes import build_web_app
from .config import Config
from .delivery.proactive import ProactiveMessages
from .delivery.worker import DeliveryWorker
from .onboarding.team_members import WELCOME_TEAM_MEMBERS, TeamMemberWelcome
from .prices.alert_actions import AlertActions
from .prices.sources import build_price_source
from .prices.watching import PriceWatcher
from .teams.edge import TeamsConnection

log = logging.getLogger(__name__)


class BotApplication:
    """Everything the bot is made of, built from config; nothing starts until `start()`."""

    def __init__(self, config: Config, clock: Clock | None = None, *, shutdown_timeout: float = 15.0) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.db = connect(config.database_url, startup_timeout_s=config.database_startup_timeout,
                          pool_size=config.database_pool_size)
        self.storage = DatabaseStorage(self.db, self.clock)
        self.references = ConversationReferences(self.db, self.clock)
        self.teams = TeamsConnection(config, self.clock)
        self.outbox = OutboxStore(self.db, self.clock)
        self.limiter = TeamsRateLimiter(self.clock, tenant_rps=config.tenant_rps)
        self.worker = DeliveryWorker(
            self.outbox,
            self.references,
            self.teams.sender,
            SendQueue(self.clock, self.limiter),
            self.clock,
            limiter=self.limiter,
        )
        self.scheduler = Scheduler(self.db, self.clock)
        self.engagement = Engagement(self.db, self.clock)
        self.preferences = Preferences(self.db, self.clock)
        self.proactive = ProactiveMessages(
            self.outbox, self.worker, self.references, self.engagement, self.preferences, self.scheduler,
            self.clock, hold_max_seconds=config.hold_max_seconds,
        )
        self.price_source = build_price_source(
            config.price_source, clock=self.clock, url_template=config.price_url_template,
            price_path=config.price_field, currency_path=config.price_currency_field,
            url_path=config.price_url_field, source_name=config.price_source_name,
        )
        self.prices = PriceLog(self.db, self.clock)
        self.watcher = PriceWatcher(
            WatchStore(self.db, self.clock), self.prices, self.proactive, self.scheduler, self.references,
            self.clock, self.price_source, coalesce_seconds=config.alert_coalesce_seconds,
        )
        self.analyses = AnalysisService(
            AnalysisStore(self.db, self.clock), self.prices, self.proactive, self.scheduler, self.references,
            self.clock, source=self.price_source, analyze_seconds=config.analyze_seconds,
            progress_delays=config.progress_delays,
        )
        turns = self.teams.turns(
            self.storage,
            bot_name=config.bot_name,
            references=self.references,
            dialog=MainDialog(watches=self.watcher, analyses=self.analyses, preferences=self.preferences,
                              clock=self.clock, bot_name=config.bot_name),
            engagement=self.engagement,
            proactive=self.proactive,
            scheduler=self.scheduler,
            welcome_team_members=config.welcome_team_members,
            alert_actions=AlertActions(self.watcher, self.preferences),
            reply_slots=self.worker,
        )
        self.scheduler.register(WELCOME_TEAM_MEMBERS, TeamMemberWelcome(
            self.teams.roster, self.references, self.proactive, config.bot_name))
        notify = NotifyEndpoints(
            config.notify_token, self.references, self.outbox, self.proactive.enqueue,
            lambda: self.clock.now().timestamp(),
        )
        self.web_app = build_web_app(MessagesEndpoint(turns), self.health, notify,
                                     PricesEndpoint(notify.refuse, self.watcher.observe, self.clock))
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._last_counts: dict[str, int] = {}
        self.port: int | None = None

    def delivery_counts(self) -> dict[str, int]:
        counts = {k: self.worker.counts.get(k, 0)
                  for k in ("queued", "sent", "retried", "throttled", "failed", "cancelled", "expired")}
        counts["dropped"] = self.proactive.counts.get("dropped", 0)  # muted / unreachable, by the policy
        counts["held"] = self.proactive.counts.get("held", 0)
        return counts

    async def _log_counts(self, job: object) -> None:
        """Every minute: trim the rate limiter's idle keys, and log the delivery counters if they moved."""
        self.limiter.forget_idle()
        counts = self.delivery_counts()
        if counts != self._last_counts:
            log.info("delivery: %s", " ".join(f"{k}={v}" for k, v in counts.items()))
            self._last_counts = counts

    async def health(self) -> dict[str, Any]:
        ok = await self.db.ping()
        report: dict[str, Any] = {"ok": ok, "database": "ok" if ok else "unavailable"}
        report["delivery"] = self.delivery_counts()
        report["teams"] = self.teams.status()
        if ok:
            report["outbox"] = await self.outbox.counts()
        return report

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        await self.db.open()
        await self.teams.start()  # the bot's token (in the background) and the channel's signing keys
        await self.worker.start()
        self.scheduler.register("stats.log", self._log_counts)
        await self.scheduler.start()
        await self.scheduler.schedule_every(60, "stats.log", key="stats.log", misfire="skip")
        await self.watcher.start()
        self._runner = web.AppRunner(self.web_app, shutdown_timeout=self._shutdown_timeout, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or self.config.host, self.config.port if port is None else port)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        log.info("listening on http://%s:%d/api/messages", address[0], self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()  # stops accepting, waits for in-flight requests up to shutdown_timeout
        await self.scheduler.stop()
        await self.worker.stop()
        await self.teams.close()
        if self.price_source is not None:
            await self.price_source.close()
        await self.db.close()
        log.info("stopped")

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
