"""Prometheus metrics of one bot process, in a registry of its own (several apps in one test process never
collide). The delivery counters of the per-minute log line and /healthz are read from here too: one bookkeeping.

Event methods are cheap (a counter increment or a histogram observation) and safe to call from any part of
bot/; gauges that need the database are filled by `collect()` right before a scrape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from state.outbox_counts import PENDING_CAP
from state.outbox_counts import TenantQueue as TenantQueue  # what `collect` reads

CONTENT_TYPE = CONTENT_TYPE_LATEST
SEND_OUTCOMES = ("queued", "sent", "retried", "throttled", "failed", "cancelled", "expired", "dropped", "held",
                 "released", "superseded")
ACTIVITY_TYPES = frozenset({"message", "invoke", "conversationUpdate", "installationUpdate", "messageReaction",
                            "event", "typing", "endOfConversation", "messageUpdate", "messageDelete"})
CATEGORIES = frozenset({"notification", "alert", "welcome", "progress", "result", "digest"})
TOP_TENANTS = 10  # queue gauges carry at most this many tenant labels, plus "other" (and "none")
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)


NOTICE_ACTIONS = ("acknowledged", "report", "scheduled", "cancelled", "recalled", "dry_run")


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only double the scrape
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._turns = Counter("bot_turns", "Inbound activities by type and outcome", ["type", "outcome"], registry=r)
        self._turn_errors = Counter("bot_turn_errors", "Turns whose handler failed (logged; answered 200 or 501)",
                                    ["type"], registry=r)
        self._turn_seconds = Histogram("bot_turn_seconds", "Time to answer an inbound activity", ["type"],
                                       buckets=_LATENCY, registry=r)
        self._sends = Counter("bot_proactive_messages", "Proactive messages by category and what happened to them",
                              ["category", "outcome"], registry=r)
        self._send_seconds = Histogram("bot_send_seconds", "Duration of one call to the Bot Connector",
                                       buckets=_LATENCY, registry=r)
        self._throttled = Counter("bot_teams_throttled", "429 answers from Teams", registry=r)
        self._retry_after = Counter("bot_teams_retry_after_seconds", "Sum of the Retry-After seconds Teams asked for",
                                    registry=r)
        self._outbox = Gauge("bot_outbox_rows", "Outbox rows by status (read at scrape)", ["status"], registry=r)
        self._queue = Gauge("bot_queue_pending", f"Pending outbox rows per tenant, counted up to {PENDING_CAP} "
                            f"per tenant (top {TOP_TENANTS} tenants, then other: the sum of theirs); the exact "
                            "total is bot_outbox_rows{status=\"pending\"}", ["tenant"], registry=r)
        self._queue_age = Gauge("bot_queue_oldest_pending_seconds", "Age of the first-queued pending row per tenant",
                                ["tenant"], registry=r)
        self._lag = Histogram("bot_scheduler_lag_seconds", "Scheduler jobs: from due to started", buckets=_LAG,
                              registry=r)
        self._dead = Gauge("bot_scheduler_dead_jobs", "Jobs out of attempts (read at scrape)", registry=r)
        self._tokens = Counter("bot_token_acquisitions", "Outbound token acquisitions by result", ["result"],
                               registry=r)
        self._credentials_refused = Counter(
            "bot_teams_credentials_refused", "401 answers from Teams to a freshly fetched token (sending pauses)",
            registry=r)
        self._service_url_refused = Counter(
            "bot_service_url_refused", "Service URLs refused: not https or host not on SERVICE_URL_HOSTS",
            ["where"], registry=r)
        self._db_errors = Counter("bot_database_errors", "Database operations that failed", ["where"], registry=r)
        self._turn_waits = Counter("bot_turn_lease_waits", "Turns that waited for another replica's turn of the same "
                                   "conversation, by how the wait ended", ["outcome"], registry=r)
        self._notices = Counter("bot_notice_actions", "Notices: acknowledgements, reports, schedules, cancels, "
                                "recalls", ["action"], registry=r)
        self._reach = Counter("bot_reach_steps", "People reached for the first time: steps taken (installing, "
                              "installed, not installed, forbidden, failed, deferred, first_chat)", ["step"],
                              registry=r)
        self._graph = Counter("bot_graph_requests", "Requests to Microsoft Graph by operation and HTTP status "
                              "(0: no answer)", ["op", "status"], registry=r)
        self._totals: dict[str, int] = dict.fromkeys(SEND_OUTCOMES, 0)
        self._send_counters: dict[tuple[str, str], Counter] = {}  # labelled children: two per send, looked up once

    # -- events ------------------------------------------------------------------------------------

    def turn(self, activity_type: str, outcome: str, seconds: float) -> None:
        kind = activity_type if activity_type in ACTIVITY_TYPES else "other"
        self._turns.labels(kind, outcome).inc()
        self._turn_seconds.labels(kind).observe(seconds)

    def turn_failed(self, activity_type: str) -> None:
        self._turn_errors.labels(activity_type if activity_type in ACTIVITY_TYPES else "other").inc()

    def message(self, category: str, outcome: str, count: int = 1) -> None:
        """`count` proactive messages of `category` reached `outcome` (one of SEND_OUTCOMES)."""
        if count <= 0:
            return
        key = (category, outcome)
        counter = self._send_counters.get(key)
        if counter is None:
            counter = self._sends.labels(category if category in CATEGORIES else "other", outcome)
            if category in CATEGORIES and outcome in SEND_OUTCOMES:  # bounded: never an unknown label value
                self._send_counters[key] = counter
        counter.inc(count)
        self._totals[outcome] = self._totals.get(outcome, 0) + count

    def notice(self, action: str, count: int = 1) -> None:
        """`count` notice actions of one kind (NOTICE_ACTIONS), e.g. people who acknowledged."""
        if count > 0:
            self._notices.labels(action if action in NOTICE_ACTIONS else "other").inc(count)

    def send_latency(self, seconds: float) -> None:
        self._send_seconds.observe(seconds)

    def throttled(self, retry_after: float | None) -> None:
        self._throttled.inc()
        if retry_after:
            self._retry_after.inc(retry_after)

    def scheduler_lag(self, handler: str, seconds: float) -> None:
        self._lag.observe(max(0.0, seconds))

    def token_acquired(self, ok: bool) -> None:
        """Call once per outbound token acquisition (a cache hit is not one)."""
        self._tokens.labels("ok" if ok else "failed").inc()

    def credentials_refused(self) -> None:
        """Teams answered 401 to a call made with a freshly fetched token."""
        self._credentials_refused.inc()

    def service_url_refused(self, where: str) -> None:
        """A service URL the bot's token may not go to (not https, host not on SERVICE_URL_HOSTS)."""
        self._service_url_refused.labels(where).inc()

    def database_error(self, where: str) -> None:
        self._db_errors.labels(where).inc()

    def watch_database(self, up: Callable[[], bool], outage_seconds: Callable[[], float],
                       outages: Callable[[], int]) -> None:
        """Serve the database's availability (read at scrape): `bot_database_available` (1/0),
        `bot_database_outage_seconds_total` (the current outage included) and `bot_database_outages_total`."""
        self.registry.register(_DatabaseCollector(up, outage_seconds, outages))

    def turn_waited(self, gave_up: bool) -> None:
        """A turn waited for another replica's turn of its conversation (and then ran, or gave up waiting)."""
        self._turn_waits.labels("gave_up" if gave_up else "ran_after").inc()

    def reach_step(self, step: str) -> None:
        """A step in reaching a new person (bot/reach)."""
        self._reach.labels(step).inc()

    def graph_request(self, op: str, status: int) -> None:
        self._graph.labels(op, str(status)).inc()

    # -- reading ---------------------------------------------------------------------------------------

    def delivery_totals(self) -> dict[str, int]:
        """Messages per outcome since start (all categories): the /healthz and log-line counters."""
        return dict(self._totals)

    async def collect(self, outbox_counts: Callable[[], Awaitable[dict[str, int]]],
                      tenant_queues: Callable[[], Awaitable[Iterable[TenantQueue]]],
                      dead_jobs: Callable[[], Awaitable[int]], now: float) -> None:
        """Fill the scrape-time gauges from the database; a failure is counted, the rest still served."""
        try:
            counts = await outbox_counts()
            queues = list(await tenant_queues())
            dead = await dead_jobs()
        except Exception:
            self.database_error("metrics")
            return
        self._outbox.clear()
        for status, n in counts.items():
            self._outbox.labels(status).set(n)
        self._queue.clear()
        self._queue_age.clear()
        for label, pending, oldest in bounded_tenants(queues, TOP_TENANTS):
            self._queue.labels(label).set(pending)
            self._queue_age.labels(label).set(max(0.0, now - oldest))
        self._dead.set(dead)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _DatabaseCollector(Collector):
    def __init__(self, up: Callable[[], bool], outage_seconds: Callable[[], float],
                 outages: Callable[[], int]) -> None:
        self._up, self._outage_seconds, self._outages = up, outage_seconds, outages

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("bot_database_available", "1 while the database answers, 0 during an outage",
                                value=1.0 if self._up() else 0.0)
        yield CounterMetricFamily("bot_database_outage_seconds", "Seconds the database was unavailable since start",
                                  value=self._outage_seconds())
        yield CounterMetricFamily("bot_database_outages", "Times the database became unavailable since start",
                                  value=self._outages())


def bounded_tenants(queues: Iterable[TenantQueue], top: int) -> list[tuple[str, int, float]]:
    """(label, pending, oldest) for the `top` tenants with most pending rows; the rest summed as "other"."""
    ranked = sorted(queues, key=lambda q: (-q.pending, q.oldest_created_at))
    out = [(q.tenant_id or "none", q.pending, q.oldest_created_at) for q in ranked[:top]]
    rest = ranked[top:]
    if rest:
        out.append(("other", sum(q.pending for q in rest), min(q.oldest_created_at for q in rest)))
    return out
