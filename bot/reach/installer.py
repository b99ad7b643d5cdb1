"""Installs the app through Graph for people Teams says lack it, within Graph's limits, and lets their
notices go after a welcome that says why they get it.

One pass (`run_due`): settle parked notices (`ReachStore.settle_parked`: self-healing after crashes and
races), claim due installs (a lease per person, so on several replicas each runs once), and for each, when
Graph's install budget for its tenant allows (`InstallLimits`, else it waits for its turn):

- `POST …/installedApps` (the catalog id from TEAMS_CATALOG_APP_ID, else looked up by the manifest id);
- 201 or 409 (already installed): queue the welcome (`welcome`; one per person, dedup key) and mark the person
  `installed` in the same transaction (the worker never meets the welcome of someone still `installing`),
  release their parked notices (`release`), which queue after the welcome;
- 429/503/504, no answer, no token: try again after Retry-After (the tenant's budget waits too) or a backoff,
  at most `max_attempts` times, then `failed`;
- 403 (no admin consent, app blocked): `forbidden`; anything else (404 unknown user, 400): `failed`; their
  parked notices fail with the reason.

Every step is a row written before the next starts, so a crash anywhere resumes: an install claimed by a dead
process is claimed again after its lease, Graph answers 409 the second time, the welcome's dedup key keeps it
single, and parked notices are released by the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from bot.graph.client import GraphError
from bot.graph.limits import InstallLimits
from bot.metrics import Metrics
from state.clock import Clock, backoff_s
from state.db import Connection
from state.reach import Person, ReachStore

log = logging.getLogger(__name__)


class Graph(Protocol):
    """The Graph calls the installer needs (bot/graph/client.py)."""

    async def catalog_app_id(self, tenant_id: str, external_id: str) -> str | None: ...

    async def install_for_user(self, tenant_id: str, user_id: str, catalog_app_id: str) -> bool: ...


Welcome = Callable[[str, str, Callable[[Connection], Awaitable[None]]], Awaitable[object]]
"""Queue the first-contact welcome for (tenant, user), committing the given writes with it."""
Release = Callable[[list[int]], Awaitable[None]]
"""Hand outbox rows made pending again to the delivery worker."""


class Installer:
    """See the module docstring."""

    def __init__(self, store: ReachStore, graph: Graph, limits: InstallLimits, clock: Clock, *, manifest_id: str,
                 catalog_app_id: str, welcome: Welcome, release: Release, owner: str,
                 metrics: Metrics | None = None, lease_s: float = 60.0, batch: int = 60, poll_s: float = 2.0,
                 retry_base_s: float = 2.0, retry_cap_s: float = 300.0, max_attempts: int = 8) -> None:
        self._store = store
        self._graph = graph
        self._limits = limits
        self._clock = clock
        self._manifest_id = manifest_id
        self._catalog_app_id = catalog_app_id
        self._welcome = welcome
        self._release = release
        self._owner = owner
        self._metrics = metrics or Metrics()
        self._lease_s = lease_s
        self._batch = batch
        self._poll_s = poll_s
        self._retry_base = retry_base_s
        self._retry_cap = retry_cap_s
        self._max_attempts = max_attempts
        self._wake = asyncio.Event()
        self._pass = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._refused_tenants: set[str] = set()
        self.budget_wait = 0.0  # after a pass: seconds until Graph's budget of a waiting tenant refills (0: none)

    # -- lifecycle -----------------------------------------------------------------------------------

    def wake(self) -> None:
        """An install became due (or parked rows changed): run a pass soon."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reach-installer")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.run_due()
                due = await self._store.next_due()
            except Exception:  # never let the installer die: log, wait a poll, go on
                log.exception("reach installer pass failed; trying again")
                due = None
            now = self._clock.now().timestamp()
            timeout = self._poll_s if due is None else min(self._poll_s, max(0.0, due - now))
            timeout = max(timeout, self.budget_wait)  # a spent budget: nothing can go before it refills
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    # -- one pass ----------------------------------------------------------------------------------------

    async def run_due(self) -> int:
        """Settle parked notices, then install for the people due now; returns how many installs were tried.
        One pass at a time per process (so a claim of this replica's own is always a previous life's)."""
        async with self._pass:
            return await self._run_due()

    async def _run_due(self) -> int:
        released = await self._store.settle_parked()
        if released:
            await self._release(released)
        people = await self._store.claim_due(self._owner, self._lease_s, self._batch)
        if not people:
            return 0
        now = self._clock.now().timestamp()
        tried: list[Person] = []
        self.budget_wait = 0.0
        for person in people:
            wait = self._limits.wait(person.tenant_id)
            if wait > 0:  # Graph's budget for the tenant is spent: its turn comes then (the claim is given back)
                await self._store.defer(person.tenant_id, person.user_id, now + wait, person.last_error or "",
                                        attempt=False)
                self.budget_wait = wait if not self.budget_wait else min(self.budget_wait, wait)
                continue
            self._limits.begin(person.tenant_id)
            tried.append(person)
        await asyncio.gather(*(self._install(person) for person in tried))
        return len(tried)

    async def _install(self, person: Person) -> None:
        tenant, user = person.tenant_id, person.user_id
        try:
            catalog = self._catalog_app_id or await self._graph.catalog_app_id(tenant, self._manifest_id)
            if not catalog:
                await self._give_up(person, "failed", f"the organisation's app catalog has no app with the manifest "
                                    f"id {self._manifest_id} (publish the app, or set TEAMS_CATALOG_APP_ID)")
                return
            fresh = await self._graph.install_for_user(tenant, user, catalog)
        except GraphError as exc:
            await self._graph_failed(person, exc)
            return
        except Exception as exc:  # a surprise: the claim is given back and it is tried again later
            log.exception("install for %s in tenant %s failed unexpectedly", user, tenant)
            await self._retry(person, None, f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._limits.complete(tenant)
        async def installed(tx: Connection) -> None:  # with the welcome row: the worker never sees one without
            await self._store.record(tenant, user, "installed", None if fresh else "already installed", tx=tx)

        await self._welcome(tenant, user, installed)
        self._metrics.reach_step("installed")
        released = await self._store.release_parked(tenant, user)
        if released:
            await self._release(released)
        log.info("installed the app for %s in tenant %s (%s); %d notice(s) follow the welcome", user, tenant,
                 "new" if fresh else "it already was", len(released))

    async def _graph_failed(self, person: Person, exc: GraphError) -> None:
        if exc.retryable:
            if exc.retry_after is not None and exc.status in (429, 503, 504):
                self._limits.penalize(person.tenant_id, exc.retry_after)
            await self._retry(person, exc.retry_after, str(exc))
        elif exc.status == 403:
            if person.tenant_id not in self._refused_tenants:
                self._refused_tenants.add(person.tenant_id)
                log.error("Graph refused to install the app in tenant %s (%s): a tenant admin must consent to "
                          "TeamsAppInstallation.ReadWriteSelfForUser.All for the bot's app", person.tenant_id, exc)
            await self._give_up(person, "forbidden", str(exc))
        else:
            await self._give_up(person, "failed", str(exc))

    async def _retry(self, person: Person, retry_after: float | None, error: str) -> None:
        if person.attempts >= self._max_attempts:
            await self._give_up(person, "failed", f"gave up after {person.attempts} attempts: {error}")
            return
        delay = retry_after if retry_after is not None else backoff_s(
            person.attempts, self._retry_base, self._retry_cap)
        await self._store.defer(person.tenant_id, person.user_id, self._clock.now().timestamp() + delay, error)
        self._metrics.reach_step("deferred")
        log.info("install for %s in tenant %s deferred %.1f s: %s", person.user_id, person.tenant_id, delay, error)

    async def _give_up(self, person: Person, state: str, error: str) -> None:
        await self._store.record(person.tenant_id, person.user_id, state, error)
        failed = await self._store.fail_parked(person.tenant_id, person.user_id, f"{state}: {error}")
        self._metrics.reach_step(state)
        log.log(logging.INFO if state == "forbidden" else logging.WARNING,  # forbidden: the tenant's error said it
                "cannot reach %s in tenant %s (%s: %s); %d notice(s) failed", person.user_id, person.tenant_id,
                state, error, failed)
