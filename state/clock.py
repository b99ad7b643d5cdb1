"""One clock for the whole process: monotonic time for intervals, UTC wall time for storage.

Lives on the bottom floor (`state/`) so every package, `scheduler/` included, can import it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential backoff after the `attempts`-th failure in a row: base, 2 x base, 4 x base, ... at most `max_s`,
    for any count (an outage of days must not overflow the arithmetic: 0.5 * 2 ** 1100 is an OverflowError)."""
    exponent = max(0, attempts - 1)
    if exponent >= 60:
        return max_s
    return min(max_s, base_s * 2 ** exponent)


class Clock(Protocol):
    """What every time-dependent part receives instead of calling `time` itself."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (same base as the event loop's time)."""
        ...

    def now(self) -> datetime:
        """Current wall time, timezone-aware UTC."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that only moves when told to; tests and benchmarks drive it with `advance`."""

    def __init__(self, start: datetime | None = None, monotonic_start: float = 1000.0) -> None:
        self._wall = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = monotonic_start

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds`."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)
