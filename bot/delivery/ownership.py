"""Which tenants this replica sends for: one replica per tenant at a time, chosen by rendezvous hashing.

Every replica heartbeats into `replicas`. Each tenant with work has a desired owner: the live replica with
the highest hash of (tenant, replica id) — every replica computes the same answer, and when replicas come
and go only the tenants of the one that came or went move. A replica sends a tenant's messages only while it
holds the tenant's lease (`tenant_leases`), so during a change two replicas never send for one tenant at
once: the old owner stops taking new sends, lets its sends in flight finish, hands its claimed rows back and
releases the lease; the new one acquires it then (or when it expires, if the old one died). Because all of a
tenant's sends go through one process, its in-memory rate limiter sees everything Teams sees: the
per-conversation windows and the per-tenant budget hold across replicas. The new owner starts its windows
from the tenant's sends that still count in one (the last hour; `OutboxStore.recent_sends`).

Without a `Leases` store (a single process, tests of the worker alone) this replica owns every tenant.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

from state.clock import Clock
from state.leases import Leases

log = logging.getLogger(__name__)


def tenant_key(tenant_id: str | None) -> str:
    """Leases and claims name a tenant by its id, '' for messages without one."""
    return tenant_id or ""


def _score(tenant: str, replica: str) -> bytes:
    return hashlib.blake2b(f"{tenant}\x00{replica}".encode(), digest_size=8).digest()


def desired_owner(tenant: str, replicas: Iterable[str]) -> str | None:
    """Rendezvous (highest random weight) hashing: the same answer on every replica."""
    return max(replicas, key=lambda replica: _score(tenant, replica), default=None)


class Ownership:
    def __init__(self, leases: Leases | None, replica_id: str, clock: Clock, *, lease_s: float = 20.0) -> None:
        self._leases = leases
        self.replica_id = replica_id
        self._clock = clock
        self.lease_s = lease_s
        self.owned: set[str] = set()
        self._live: list[str] = [replica_id]

    @property
    def standalone(self) -> bool:
        return self._leases is None

    @property
    def live(self) -> list[str]:
        """The replicas seen alive at the last heartbeat."""
        return list(self._live)

    def owns(self, tenant: str) -> bool:
        return self.standalone or tenant in self.owned

    def wants(self, tenant: str) -> bool:
        """Whether this replica is the tenant's desired owner (by the replicas it last saw alive)."""
        return self.standalone or desired_owner(tenant, self._live) == self.replica_id

    async def heartbeat(self) -> list[str]:
        """Say this replica is alive; learn which are."""
        if self._leases is None:
            return self._live
        now = self._clock.now().timestamp()
        await self._leases.heartbeat(self.replica_id, now)
        self._live = await self._leases.live(now - self.lease_s) or [self.replica_id]
        return self._live

    async def acquire(self, tenants: Iterable[str]) -> set[str]:
        """Take the leases of those of `tenants` this replica should own and can; returns those newly owned."""
        if self._leases is None:
            return set()
        now = self._clock.now().timestamp()
        gained = set()
        for tenant in tenants:
            if tenant in self.owned or not self.wants(tenant):
                continue
            if await self._leases.acquire(tenant, self.replica_id, now + self.lease_s, now):
                self.owned.add(tenant)
                gained.add(tenant)
                log.info("replica %s now sends for tenant %s", self.replica_id, tenant or "(none)")
        return gained

    async def renew(self) -> set[str]:
        """Extend the leases held; returns those lost meanwhile (this replica was too slow to renew)."""
        if self._leases is None or not self.owned:
            return set()
        now = self._clock.now().timestamp()
        held = await self._leases.renew(self.replica_id, sorted(self.owned), now + self.lease_s)
        lost = self.owned - held
        if lost:
            log.warning("replica %s lost the lease of %d tenant(s): %s", self.replica_id, len(lost), sorted(lost))
        self.owned = held
        return lost

    def misplaced(self) -> set[str]:
        """Owned tenants another replica should own now (one came back, or joined)."""
        return {t for t in self.owned if not self.wants(t)}

    async def release(self, tenants: Iterable[str] | None = None) -> None:
        """Give leases back (all when None); on a clean stop the replica also leaves the live list."""
        if self._leases is None:
            return
        if tenants is None:
            await self._leases.release(self.replica_id)
            await self._leases.leave(self.replica_id)
            self.owned.clear()
            return
        tenants = set(tenants)
        await self._leases.release(self.replica_id, tenants)
        self.owned -= tenants
        for tenant in tenants:
            log.info("replica %s hands tenant %s over", self.replica_id, tenant or "(none)")
