"""Repeated warnings, said once a minute: a logging filter for the process's handler (text and JSON alike).

The first WARNING (or ERROR) of a kind — the same logger, level and message template — passes; the same again
within `window_s` is counted, not written. The first one after the window passes with
"(… N more in the last minute)" appended, and `flush()` (called every minute by the housekeeping) writes a
line for kinds whose repeats were held back and then went quiet, so no count is lost. DEBUG and INFO pass
untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("bot.logs")


@dataclass
class _Kind:
    since: float  # when the last line of this kind was written
    held: int = 0  # lines of this kind not written since then
    sample: str = ""  # the last held line, for flush()


class RepeatFilter(logging.Filter):
    def __init__(self, window_s: float = 60.0, monotonic: Callable[[], float] = time.monotonic,
                 max_kinds: int = 1000) -> None:
        super().__init__()
        self._window = window_s
        self._monotonic = monotonic
        self._kinds: dict[tuple[str, int, str], _Kind] = {}
        self._max_kinds = max_kinds

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, "repeat_summary", False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._monotonic()
        kind = self._kinds.get(key)
        if kind is None:
            if len(self._kinds) >= self._max_kinds:
                self._forget(now)
            self._kinds[key] = _Kind(now)
            return True
        if now - kind.since < self._window:
            kind.held += 1
            kind.sample = record.getMessage()
            return False
        if kind.held:
            record.msg = f"{record.getMessage()} (… {kind.held} more in the last minute)"
            record.args = None
        kind.since, kind.held, kind.sample = now, 0, ""
        return True

    def _forget(self, now: float) -> None:
        for key, kind in list(self._kinds.items()):
            if now - kind.since >= self._window and not kind.held:
                del self._kinds[key]
        if len(self._kinds) >= self._max_kinds:
            self._kinds.clear()

    def flush(self) -> None:
        """Write one line for each kind whose held-back repeats are older than the window."""
        now = self._monotonic()
        for (name, level, _), kind in list(self._kinds.items()):
            if kind.held and now - kind.since >= self._window:
                logging.getLogger(name).log(level, "%s (… %d more in the last minute)", kind.sample, kind.held,
                                            extra={"repeat_summary": True})
                kind.since, kind.held, kind.sample = now, 0, ""


def repeat_filters() -> list[RepeatFilter]:
    """The RepeatFilters on the root logger's handlers (what `configure_logging` installed)."""
    return [f for h in logging.getLogger().handlers for f in h.filters if isinstance(f, RepeatFilter)]
