"""Pacing: proactive sends give way to people chatting with the bot.

Turns and sends share one event loop. A broadcast can keep the loop so busy (64 sends in flight, claims,
outcome batches) that every step of a turn waits behind it: a "help" that takes 5 ms alone took seconds.
`LoopPacing` watches how late the loop runs a timer (its lag) and sets how many sends may be in flight:
halved while the lag is over `high_s`, grown by a few while it is under `low_s` (additive increase,
multiplicative decrease), never under `floor` or over the configured maximum. So a broadcast goes as fast as
the process can afford while a turn's steps still run within a few milliseconds.

The lag is real time by nature (it measures the loop, not the domain clock): one `call_later` timer re-armed
every `interval_s`, no task, no sleep.
"""

from __future__ import annotations

import asyncio


class LoopPacing:
    """How many sends may be in flight now, from the event loop's lag (see the module docstring)."""

    def __init__(self, maximum: int, *, floor: int = 16, step: int = 4, interval_s: float = 0.05,
                 high_s: float = 0.02, low_s: float = 0.005) -> None:
        self.maximum = maximum
        self.limit = maximum
        self._floor = min(floor, maximum)
        self._step = step
        self._interval = interval_s
        self._high = high_s
        self._low = low_s
        self._handle: asyncio.TimerHandle | None = None
        self._expected = 0.0
        self.lag_s = 0.0  # the last lag measured

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._expected = loop.time() + self._interval
        self._handle = loop.call_at(self._expected, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.observe(now - self._expected)
        self._expected = now + self._interval
        self._handle = loop.call_at(self._expected, self._tick)

    def observe(self, lag_s: float) -> None:
        """One lag measurement: adjust the limit."""
        self.lag_s = lag_s
        if lag_s > self._high:
            self.limit = max(self._floor, self.limit // 2)
        elif lag_s < self._low:
            self.limit = min(self.maximum, self.limit + self._step)
