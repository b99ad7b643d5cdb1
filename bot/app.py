"""The application factory and its ordered lifecycle.

start: open the database (migrating it), get the Teams identity ready, start background work, then accept HTTP.
stop:  stop accepting, let in-flight turns finish, stop background work, close the database.
Both through one AsyncExitStack: a part's stop is registered as it starts, so a failed start stops what started
and a failing stop does not keep the others from stopping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web

from dialogs.main_dialog import MainDialog
from scheduler.ratelimit import TeamsRateLimiter
from scheduler.scheduler import Scheduler
from scheduler.sendqueue import SendQueue
from state.analyses import AnalysisStore
from state.broadcasts import BroadcastStore
from state.clock import Clock, SystemClock
from state.db import connect
from state.engagement import Engagement
from state.leases import Leases, TurnLeases
from state.notices import Audiences, DeliveryReport, NoticeControl, NoticeStore, RecallStore
from state.outbox import OutboxStore
from state.preferences import Preferences
from state.prices import PriceLog
from state.processed import ProcessedActivities
from state.reach import ReachStore
from state.references import ConversationReferences
from state.storage import DatabaseStorage
from state.watches import WatchStore

from .access import AllowedTenants
from .analyses.service import AnalysisService
from .api.broadcasts import Broadcasts, expansion_key
from .api.dry_run import DryRun
from .api.guards import TokenGate
from .api.health import CachedHealth, HealthEndpoint
from .api.messages import MessagesEndpoint
from .api.metrics import MetricsEndpoint
from .api.notices import NoticeEndpoints
from .api.notify import MAX_MESSAGE_BYTES, NotifyEndpoints
from .api.prices import PricesEndpoint
from .api.routes import build_web_app
from .config import Config, is_loopback
from .delivery.ownership import Ownership
from .delivery.proactive import ProactiveMessages
from .delivery.settings import NotificationPreferences
from .delivery.worker import DeliveryWorker
from .graph.client import GraphClient
from .graph.limits import InstallLimits
from .log_repeats import repeat_filters
from .metrics import Metrics
from .notices.acknowledge import Acknowledgements
from .notices.lifecycle import NoticeLifecycle
from .notices.recall import Recalls
from .onboarding.team_members import WELCOME_TEAM_MEMBERS, TeamMemberWelcome
from .prices.alert_actions import AlertActions
from .prices.sources import build_price_source
from .prices.watching import PriceWatcher
from .reach.groups import GroupPages
from .reach.installer import Installer
from .reach.people import NewPeople, welcome_item
from .reach.targets import ReachTargets
from .reach.team import TeamPages
from .retention import Retention
from .teams.edge import TeamsConnection
from .turn_gate import TurnGate

log = logging.getLogger(__name__)


class BotApplication:
    """Everything the bot is made of, built from config; nothing starts until `start()`."""

    def __init__(self, config: Config, clock: Clock | None = None, *, shutdown_timeout: float = 15.0) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.tenants = AllowedTenants(config.allowed_tenants)
        self.db = connect(config.database_url, startup_timeout_s=config.database_startup_timeout,
                          pool_size=config.database_pool_size, busy_timeout_s=config.database_busy_timeout)
        self.availability = self.db.availability
        self.metrics.watch_database(lambda: self.availability.up, self.availability.outage_seconds,
                                    lambda: self.availability.outages)
        self.storage = DatabaseStorage(self.db, self.clock)
        self.references = ConversationReferences(self.db, self.clock)
        self.teams = TeamsConnection(config, self.clock, self.metrics)
        self.outbox = OutboxStore(self.db, self.clock)
        self.limiter = TeamsRateLimiter(self.clock, tenant_rps=config.tenant_rps)
        self.reach = ReachStore(self.db, self.clock)
        self.new_people = NewPeople(
            self.reach, self.references, self.teams.sender, app_id=config.app_id, clock=self.clock,
            proactive_install=config.proactive_install, default_service_url=config.teams_service_url,
            metrics=self.metrics, wake_installer=lambda: self.installer.wake())
        self.worker = DeliveryWorker(
            self.outbox,
            self.references,
            self.teams.sender,
            SendQueue(self.clock, self.limiter),
            self.clock,
            limiter=self.limiter,
            metrics=self.metrics,
            ownership=Ownership(Leases(self.db), config.replica_id, self.clock, lease_s=config.lease_seconds),
            claim_batch=250,  # claimed rows pass the policy in one step: small pages keep that step short
            new_people=self.new_people,
        )
        self.scheduler = Scheduler(self.db, self.clock, on_job_start=self.metrics.scheduler_lag,
                                   owner=config.replica_id, lease_seconds=max(config.lease_seconds, 30.0))
        self.engagement = Engagement(self.db, self.clock)
        self.preferences = Preferences(self.db, self.clock)
        self.proactive = ProactiveMessages(
            self.outbox, self.worker, self.references, self.engagement, self.preferences, self.scheduler,
            self.clock, hold_max_seconds=config.hold_max_seconds, max_message_bytes=MAX_MESSAGE_BYTES,
            tenants=self.tenants,
        )
        self.graph = GraphClient(self.teams.session.get, self.teams.graph_tokens_for, config.graph_url,
                                 proxy_for=self.teams.session.proxy_for, on_answer=self.metrics.graph_request)
        self.installer = Installer(
            self.reach, self.graph,
            InstallLimits(self.clock), self.clock, manifest_id=config.app_id,
            catalog_app_id=config.teams_catalog_app_id, owner=config.replica_id, metrics=self.metrics,
            welcome=lambda tenant, user, also: self.proactive.enqueue([welcome_item(config.bot_name, tenant, user)],
                                                                      also=also),
            release=self._release_rows)
        self.price_source = build_price_source(
            config.price_source, clock=self.clock, url_template=config.price_url_template,
            price_path=config.price_field, currency_path=config.price_currency_field,
            url_path=config.price_url_field, source_name=config.price_source_name, proxies=config.proxies,
        )
        self.prices = PriceLog(self.db, self.clock)
        self.watcher = PriceWatcher(
            WatchStore(self.db, self.clock), self.prices, self.proactive, self.scheduler, self.references,
            self.clock, self.price_source, coalesce_seconds=config.alert_coalesce_seconds,
            preferences=self.preferences,
        )
        self.analysis_store = AnalysisStore(self.db, self.clock)
        self.analyses = AnalysisService(
            self.analysis_store, self.prices, self.proactive, self.scheduler, self.references,
            self.clock, source=self.price_source, analyze_seconds=config.analyze_seconds,
            progress_delays=config.progress_delays, preferences=self.preferences,
            max_per_user=config.max_analyses_per_user, max_per_tenant=config.max_analyses_per_tenant,
        )
        self.broadcast_store = BroadcastStore(self.db, self.outbox, self.clock)
        self.notices = NoticeStore(self.db, self.clock)
        self.processed = ProcessedActivities(self.db, self.clock)
        turns = self.teams.turns(
            self.storage,
            bot_name=config.bot_name,
            references=self.references,
            dialog=MainDialog(watches=self.watcher, analyses=self.analyses,
                              preferences=NotificationPreferences(self.preferences, self.proactive),
                              clock=self.clock, bot_name=config.bot_name),
            engagement=self.engagement,
            proactive=self.proactive,
            scheduler=self.scheduler,
            welcome_team_members=config.welcome_team_members,
            alert_actions=AlertActions(self.watcher, self.preferences),
            preferences=self.preferences,
            reply_slots=self.worker,
            reached=self.new_people.installed_by_us if config.proactive_install else None,
            turn_gate=TurnGate(TurnLeases(self.db), config.replica_id, self.clock,
                               shared=lambda: len(self.worker.ownership.live) > 1, metrics=self.metrics),
            acknowledgements=Acknowledgements(self.notices, self.broadcast_store, self.preferences, self.clock,
                                              self.metrics),
            processed=self.processed,
        )
        self.broadcasts = Broadcasts(self.broadcast_store, self.outbox, self.references, self.proactive, self.worker,
                                     self.scheduler, tenants=self.tenants, page=config.broadcast_page,
                                     list_page=min(500, config.broadcast_page), clock=self.clock,
                                     team_pages=TeamPages(self.teams.roster, self.references, self.broadcast_store),
                                     group_pages=GroupPages(self.graph, self.references, self.broadcast_store,
                                                            self.tenants))
        self.retention = Retention(self.outbox, self.broadcast_store, self.prices, self.scheduler, self.clock,
                                   days=config.retention_days, analyses=self.analysis_store,
                                   processed=self.processed)
        self.availability.on_change(self._database_changed)
        self._health_cache = CachedHealth(self.readiness, self.clock)
        self._health_detail_cache = CachedHealth(self.health, self.clock)
        self.scheduler.register(WELCOME_TEAM_MEMBERS, TeamMemberWelcome(
            self.teams.roster, self.references, self.proactive, config.bot_name, self.scheduler))
        self.notice_lifecycle = NoticeLifecycle(NoticeControl(self.db, self.clock), self.worker, self.scheduler,
                                                self.clock, self.metrics, tenant_rps=config.tenant_rps,
                                                expansion_key=expansion_key)
        notify = NotifyEndpoints(config.notify_token, self.outbox, self.broadcasts,
                                 lambda: self.clock.now().timestamp(), self.notice_lifecycle,
                                 DryRun(Audiences(self.db), self.references, self.tenants, self.metrics),
                                 reach=ReachTargets(self.references, self.reach))
        self.notice_endpoints = NoticeEndpoints(notify.refuse, self.broadcast_store, DeliveryReport(self.db),
                                                self.metrics, self.notice_lifecycle, Recalls(
                                                    RecallStore(self.db, self.clock), self.references,
                                                    self.teams.sender, self.worker, self.scheduler, self.metrics))
        operators = TokenGate(config.metrics_token, "METRICS_TOKEN", "Metrics",
                              open_when_unset=config.allow_open_metrics or is_loopback(config.host))
        self.web_app = build_web_app(
            MessagesEndpoint(turns, self.metrics, local=not config.auth_enabled,
                             service_urls=self.teams.service_urls, tenants=self.tenants),
            HealthEndpoint(self._health_cache, operators, self._health_detail_cache), notify,
            PricesEndpoint(TokenGate(config.prices_token, "PRICES_TOKEN", "Prices").refuse, self.watcher.observe,
                           self.clock),
            MetricsEndpoint(operators, self.metrics, self._refresh_gauges), self.metrics,
            self.notice_endpoints,
            local_mode=not config.auth_enabled,
        )
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._last_counts: dict[str, int] = {}
        self._housekeeper: asyncio.Task[None] | None = None
        self._stack: AsyncExitStack | None = None
        self._stop_failures: list[str] = []
        self.port: int | None = None

    async def _release_rows(self, ids: list[int]) -> None:
        """Rows made pending again outside the worker (parked behind an install): hand them to it."""
        await self.worker.offer(await self.outbox.get_many(ids))

    def _database_changed(self, up: bool) -> None:
        """Gone or back: /healthz says so at its next probe; back: every part that backs off retries now (the
        notification connection is woken by the database)."""
        self._health_cache.forget()
        self._health_detail_cache.forget()
        if up:
            self.worker.database_back()
            self.scheduler.database_back()

    def delivery_counts(self) -> dict[str, int]:
        """Proactive messages per outcome since start, from the metrics (the same numbers /metrics shows)."""
        return self.metrics.delivery_totals()

    async def _refresh_gauges(self) -> None:
        async def dead() -> int:
            return len(await self.scheduler.dead_jobs())

        await self.metrics.collect(self.outbox.counts, self.outbox.tenant_queues, dead, self.clock.now().timestamp())

    def housekeeping(self) -> None:
        """This process's own chores: trim the rate limiter's idle keys, log the delivery counters if they moved."""
        self.limiter.forget_idle()
        for repeats in repeat_filters():
            repeats.flush()
        counts = self.delivery_counts()
        if counts != self._last_counts:
            log.info("delivery: %s", " ".join(f"{k}={v}" for k, v in counts.items()))
            self._last_counts = counts

    async def _housekeep_every_minute(self) -> None:
        while True:  # per process, so not a scheduler job (any replica may run those)
            await asyncio.sleep(60)
            try:
                self.housekeeping()
            except Exception:
                log.exception("housekeeping failed; trying again in a minute")

    async def readiness(self) -> dict[str, Any]:
        """What public probes are told: the check of `health` without the operator's queue counts (a count of the
        outbox is a scan of every row a million-person notice left; probes come every few seconds)."""
        return await self.health(outbox=False)

    async def health(self, outbox: bool = True) -> dict[str, Any]:
        """Ready to serve: the database answers and delivery is not stuck (else `ok` False and `reasons`)."""
        database_ok = await self.db.ping()
        if not database_ok:
            self.metrics.database_error("healthz")
        delivery = self.worker.health()
        reasons = ([] if database_ok else ["the database does not answer"]) + (
            [] if delivery["ok"] else [str(delivery["reason"])]) + self.teams.problems()
        report: dict[str, Any] = {"ok": not reasons, "database": "ok" if database_ok else "unavailable"}
        if reasons:
            report["reasons"] = reasons
        report["delivery"] = {**self.delivery_counts(), **delivery}
        report["replica"] = self.worker.replica_status()
        report["teams"] = self.teams.status()
        if database_ok and outbox:
            try:
                report["outbox"] = await self.outbox.counts()
            except Exception:  # the ping just passed; a failure here is reported, not raised
                self.metrics.database_error("healthz")
                log.warning("could not count outbox rows for /healthz", exc_info=True)
        return report

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Start every part in order. Each part's stop is registered on one exit stack as the part starts, so a
        start that fails half-way (the port is taken) stops what did start: claims handed back, leases released,
        the database closed."""
        stack = AsyncExitStack()
        try:
            await self._start_parts(stack, host, port)
        except BaseException:
            await self._unwind(stack)
            raise
        self._stack = stack

    async def _start_parts(self, stack: AsyncExitStack, host: str | None, port: int | None) -> None:
        await self.db.open()
        stack.push_async_callback(self._stop_part, "database", self.db.close)  # (closed last)
        if self.price_source is not None:
            stack.push_async_callback(self._stop_part, "price source", self.price_source.close)
        stack.push_async_callback(self._stop_part, "Teams connection", self.teams.close)
        await self.teams.start()  # the bot's token (in the background) and the channel's signing keys
        stack.push_async_callback(self._stop_part, "delivery worker", self.worker.stop)
        await self.worker.start()
        if self.config.proactive_install:
            stack.push_async_callback(self._stop_part, "reach installer", self.installer.stop)
            await self.installer.start()
        self.scheduler.register("stats.log", self._retired_job)
        stack.push_async_callback(self._stop_part, "scheduler", self.scheduler.stop)
        await self.scheduler.start()
        await self.scheduler.cancel(key="stats.log")  # was a shared job before replicas; now per process
        self._housekeeper = asyncio.create_task(self._housekeep_every_minute(), name="housekeeping")
        stack.push_async_callback(self._stop_part, "housekeeping", self._stop_housekeeping)
        await self.watcher.start()
        await self.proactive.start()
        await self.broadcasts.start()
        await self.retention.start()
        self._runner = web.AppRunner(self.web_app, shutdown_timeout=self._shutdown_timeout, access_log=None)
        stack.push_async_callback(self._stop_part, "HTTP server", self._stop_http)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or self.config.host, self.config.port if port is None else port)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        log.info("listening on http://%s:%d/api/messages", address[0], self.port)

    async def _stop_part(self, name: str, stop: Callable[[], Awaitable[object]]) -> None:
        """Stop one part; a failure is logged and the parts after it still stop."""
        try:
            await stop()
        except Exception:
            self._stop_failures.append(name)
            log.exception("stopping the %s failed; stopping the rest", name)

    async def _stop_housekeeping(self) -> None:
        if self._housekeeper is not None:
            task, self._housekeeper = self._housekeeper, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _stop_http(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()  # stops accepting, waits for in-flight requests up to shutdown_timeout

    async def _unwind(self, stack: AsyncExitStack) -> None:
        self._stop_failures = []
        await stack.aclose()
        if self._stop_failures:
            log.error("stopped; these parts failed to stop: %s", ", ".join(self._stop_failures))
        else:
            log.info("stopped")

    async def _retired_job(self, job: object) -> None:
        """A 'stats.log' run left by an older version: nothing to do (its key is cancelled at start)."""

    async def stop(self) -> None:
        """Stop in the reverse order of start: HTTP (in-flight turns finish), housekeeping, scheduler, delivery
        (claims and tenants handed back), Teams, price source, database; one failing part stops no other."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await self._unwind(stack)

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
