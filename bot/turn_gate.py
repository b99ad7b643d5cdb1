"""One turn at a time per conversation, in this process and across replicas.

In one process an `asyncio.Lock` per conversation is enough. While other replicas are alive (the delivery
worker's heartbeat says so), a turn also holds the conversation's turn lease (`state.leases.TurnLeases`), so
two turns of one conversation served by two replicas (a load balancer without stickiness) run one after the
other instead of racing on the dialog state's eTag, which would cost one of them an apology. A turn waits at
most `wait_s` for the lease (then runs anyway and says so in the log); a lease left by a replica that died
mid-turn runs out after `lease_s`. A replica that gives a lease back wakes the waiters through the database's
notifications; waiters also retry every `poll_s`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from weakref import WeakValueDictionary

from bot.metrics import Metrics
from state.clock import Clock
from state.db import ANY
from state.leases import TurnLeases

log = logging.getLogger(__name__)


class TurnGate:
    def __init__(self, leases: TurnLeases | None = None, replica_id: str = "", clock: Clock | None = None,
                 shared: Callable[[], bool] = lambda: False, *, lease_s: float = 30.0, wait_s: float = 10.0,
                 poll_s: float = 0.1, metrics: Metrics | None = None) -> None:
        self._leases = leases
        self._metrics = metrics
        self._replica_id = replica_id
        self._clock = clock
        self._shared = shared  # whether other replicas are alive now
        self._lease_s, self._wait_s, self._poll_s = lease_s, wait_s, poll_s
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()
        self._waiting: dict[str, asyncio.Event] = {}
        if leases is not None:
            leases.on_free(self._freed)

    @asynccontextmanager
    async def turn(self, conversation_id: str) -> AsyncIterator[None]:
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[conversation_id] = lock
        async with lock:
            held = await self._take(conversation_id) if self._leases is not None and self._shared() else False
            try:
                yield
            finally:
                if held:
                    await self._give_back(conversation_id)

    async def _give_back(self, conversation_id: str) -> None:
        """After the turn's work is done: a failure here must not turn it into an error (the lease runs out)."""
        assert self._leases is not None
        try:
            await self._leases.give_back(conversation_id, self._replica_id)
        except Exception:
            log.warning("conversation %s: could not give the turn lease back; it runs out in %.0f s",
                        conversation_id, self._lease_s, exc_info=True)

    async def _take(self, conversation_id: str) -> bool:
        assert self._leases is not None and self._clock is not None
        deadline = self._clock.monotonic() + self._wait_s
        waited = False
        while True:
            now = self._clock.now().timestamp()
            if await self._leases.take(conversation_id, self._replica_id, now + self._lease_s, now):
                if waited and self._metrics is not None:
                    self._metrics.turn_waited(gave_up=False)
                return True
            waited = True
            left = deadline - self._clock.monotonic()
            if left <= 0:
                log.warning("conversation %s: another replica's turn held it for %.0f s; this turn runs anyway",
                            conversation_id, self._wait_s)
                if self._metrics is not None:
                    self._metrics.turn_waited(gave_up=True)
                return False
            freed = self._waiting.setdefault(conversation_id, asyncio.Event())
            try:
                await asyncio.wait_for(freed.wait(), min(self._poll_s, left))
            except TimeoutError:
                pass
            finally:
                if self._waiting.get(conversation_id) is freed:
                    del self._waiting[conversation_id]

    def _freed(self, conversation_id: str) -> None:
        if conversation_id == ANY:
            for waiting in self._waiting.values():
                waiting.set()
        elif (freed := self._waiting.get(conversation_id)) is not None:
            freed.set()
