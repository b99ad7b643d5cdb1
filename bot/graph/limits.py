"""Graph's published limits for app installation, on the injected clock.

`POST/PUT …/installedApps`: 30 requests per second per app per tenant, 300 per second per app over all
tenants. The same sliding-window limiter as Teams' sends (scheduler/ratelimit.py), with the tenant in the
role of a conversation and the app in the role of a tenant, and a 429's Retry-After as a penalty on the
tenant. Per process: with several replicas each holds its own windows (see docs/architecture.md).
"""

from __future__ import annotations

import math

from scheduler.ratelimit import TeamsRateLimiter, Window
from state.clock import Clock

INSTALLS_PER_TENANT = 30
INSTALLS_PER_APP = 300
_APP = "*app"


class InstallLimits:
    """May an install for this tenant go now? (`wait` > 0: the seconds until it may)."""

    def __init__(self, clock: Clock, *, per_tenant: int = INSTALLS_PER_TENANT,
                 per_app: int = INSTALLS_PER_APP) -> None:
        self._window_s = 1.0
        self._limiter = TeamsRateLimiter(clock, conversation_windows=(Window(per_tenant, 1.0),), tenant_rps=per_app)

    def wait(self, tenant_id: str) -> float:
        """Seconds until the next install for this tenant may start; with every slot in flight, the window's
        length (a completion frees one by then), never infinity: callers schedule on it."""
        wait = self._limiter.wait_time(tenant_id, _APP)
        return wait if math.isfinite(wait) else self._window_s

    def begin(self, tenant_id: str) -> None:
        """An install request is going out now (checked with `wait`); it holds a slot until `complete`."""
        self._limiter.begin(tenant_id, _APP)

    def complete(self, tenant_id: str) -> None:
        self._limiter.complete(tenant_id, _APP)

    def penalize(self, tenant_id: str, retry_after: float) -> None:
        """Graph said 429/503 with Retry-After: nothing more for this tenant until then."""
        self._limiter.penalize(tenant_id, _APP, retry_after)

    def forget_idle(self) -> int:
        return self._limiter.forget_idle()
