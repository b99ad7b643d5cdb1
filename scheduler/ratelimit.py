"""Teams' send limits as a pure, clock-injected limiter: "may this send go now, and if not, when?".

The send queue asks `tenant_wait` / `conversation_wait` before each proactive send; a positive answer is
the number of seconds until it may go (infinity: when a send in flight is answered), so the worker can
serve other conversations meanwhile and arm one timer for the earliest wake-up. It then calls `begin`,
and `complete` when Teams has answered. Nothing here sleeps, polls or starts tasks; it is not thread-safe
(one event loop owns it).

Every window is a sliding-window log: the timestamps of recent sends, newest last. A send may go when, for
each window of `limit` sends per `seconds`, the `limit`-th most recent send is at least `seconds` old.

Safety margin: every window is treated as `1 + margin` times its nominal length (default 2 %, i.e. 20 ms
on the 1 s window), against clock differences between us and Teams; it costs about the same fraction of
throughput. Network delay is handled exactly instead: a send started with `begin` holds a slot until
`complete`, and is logged at the time of its answer, which is later than the moment Teams counted it.

Not built on pyrate-limiter (4.5): it has several rates per key, but no atomic check across two buckets
(a conversation's and its tenant's) since its only check is a `put` that records and cannot be undone, and
no penalty/block-until after a 429; its clock is also integer milliseconds.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from state.clock import Clock


@dataclass(frozen=True)
class Window:
    """At most `limit` sends in any `seconds`-long span."""

    limit: int
    seconds: float

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"Window.limit must be >= 1, got {self.limit}")
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(f"Window.seconds must be a positive number, got {self.seconds}")


#: Teams' per-bot, per-conversation send limits (all apply at once).
TEAMS_CONVERSATION_WINDOWS: tuple[Window, ...] = (
    Window(7, 1.0),
    Window(8, 2.0),
    Window(60, 30.0),
    Window(1800, 3600.0),
)
#: Teams' per-app, per-tenant budget across all conversations (older docs: 30).
DEFAULT_TENANT_RPS = 50.0
#: Windows are treated as this fraction longer than nominal.
DEFAULT_MARGIN = 0.02


class _Log:
    """Recent send times of one key (newest last, at most `capacity`), sends still in flight, and the end of any
    429 penalty. A list, not a deque: most keys hold one or two times, and a deque costs ~760 bytes empty."""

    __slots__ = ("blocked_until", "capacity", "in_flight", "times")

    def __init__(self, capacity: int) -> None:
        self.times: list[float] = []
        self.capacity = capacity
        self.blocked_until = -math.inf
        self.in_flight = 0

    def add(self, at: float) -> None:
        self.times.append(at)
        if len(self.times) > self.capacity:
            del self.times[0]


class _Limits:
    """A set of windows, stretched by the margin, as (limit, seconds) pairs for the hot path."""

    __slots__ = ("capacity", "horizon", "pairs")

    def __init__(self, windows: Iterable[Window], margin: float) -> None:
        self.pairs = tuple((w.limit, w.seconds * (1.0 + margin)) for w in windows)
        if not self.pairs:
            raise ValueError("at least one window is required")
        self.capacity = max(limit for limit, _ in self.pairs)
        self.horizon = max(seconds for _, seconds in self.pairs)

    def wait(self, log: _Log, now: float) -> float:
        """Seconds until `log` may send (<= 0 means now); drops times outside every window."""
        times = log.times
        oldest_kept = now - self.horizon
        if times and times[0] <= oldest_kept:
            del times[:bisect.bisect_right(times, oldest_kept)]
        wait = log.blocked_until - now
        count = len(times)
        busy = log.in_flight
        for limit, seconds in self.pairs:
            room = limit - busy  # sends in flight may land in any window that is open now
            if room <= 0:
                return math.inf  # only a completion can make room
            if count >= room:
                until = times[-room] + seconds - now
                if until > wait:
                    wait = until
        return wait

    def is_idle(self, log: _Log, now: float) -> bool:
        """Whether `log` has no send inside any window and no penalty in force."""
        return (log.blocked_until <= now and log.in_flight == 0
                and (not log.times or log.times[-1] <= now - self.horizon))


class TeamsRateLimiter:
    """Per-conversation and per-tenant sliding-window limits plus 429 penalties, on an injected clock.

    A `tenant_id` of None (e.g. a non-Teams channel) applies no tenant budget.
    `tenant_rps` comes from configuration (`TEAMS_TENANT_RPS`); it is enforced as `floor(tenant_rps)` sends
    per 1 s window.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        conversation_windows: Iterable[Window] = TEAMS_CONVERSATION_WINDOWS,
        tenant_rps: float = DEFAULT_TENANT_RPS,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        if not (tenant_rps >= 1 and math.isfinite(tenant_rps)):
            raise ValueError(f"tenant_rps must be a number >= 1, got {tenant_rps}")
        if not (margin >= 0 and math.isfinite(margin)):
            raise ValueError(f"margin must be a number >= 0, got {margin}")
        self._clock = clock
        windows = sorted(conversation_windows, key=lambda w: w.seconds)
        # Forgetting one-send conversations (below) can leave out at most one send per `forget_after` seconds
        # from the longest window's count; that window's limit is lowered by as many, so Teams' stays whole.
        self._forget_after: float | None = None
        if len(windows) >= 2:
            forget_after = windows[-2].seconds * (1.0 + margin)
            missed = math.ceil(windows[-1].seconds * (1.0 + margin) / forget_after)
            if windows[-1].limit - missed >= windows[-2].limit:
                self._forget_after = forget_after
                windows[-1] = Window(windows[-1].limit - missed, windows[-1].seconds)
        self._singles: deque[tuple[float, str]] = deque()
        # A conversation whose log would hold one send and nothing else (the usual broadcast recipient) is kept
        # as that send's time alone (about half the memory of a log): one send fills no window while every
        # window allows two or more, so it needs no log until a second send comes.
        self._once: dict[str, float] = {}
        self._compact = all(w.limit >= 2 for w in windows)
        self._conversation = _Limits(windows, margin)
        self._tenant = _Limits((Window(math.floor(tenant_rps), 1.0),), margin)
        self._conversations: dict[str, _Log] = {}
        self._tenants: dict[str, _Log] = {}

    @property
    def history_s(self) -> float:
        """How long a send still counts in some window (the longest, with the margin): what a replica taking a
        tenant over must `remember` of the sends made before."""
        return max(self._conversation.horizon, self._tenant.horizon)

    def wait_time(self, conversation_id: str, tenant_id: str | None) -> float:
        """Seconds until a send to this conversation may go (0.0: now). Records nothing."""
        return self._wait(conversation_id, tenant_id, self._clock.monotonic())

    def try_acquire(self, conversation_id: str, tenant_id: str | None) -> float:
        """Record a send and return 0.0 if it may go now; otherwise record nothing and return the wait.

        The conversation's and the tenant's windows are checked together: a send is recorded in both or
        in neither.
        """
        now = self._clock.monotonic()
        wait = self._wait(conversation_id, tenant_id, now)
        if wait > 0.0:
            return wait
        conversation = self._conversation_log(conversation_id)
        conversation.add(now)
        self._maybe_single(conversation_id, conversation, now)
        if tenant_id is not None:
            self._tenant_log(tenant_id).add(now)
        return 0.0

    def tenant_wait(self, tenant_id: str | None) -> float:
        """Seconds until the tenant's budget admits another send (0.0: now). Records nothing."""
        tenant = self._tenants.get(tenant_id) if tenant_id is not None else None
        wait = self._tenant.wait(tenant, self._clock.monotonic()) if tenant is not None else 0.0
        return wait if wait > 0.0 else 0.0

    def conversation_wait(self, conversation_id: str) -> float:
        """Seconds until the conversation's own windows admit another send (0.0: now). Records nothing."""
        conversation = self._conversations.get(conversation_id)
        wait = self._conversation.wait(conversation, self._clock.monotonic()) if conversation is not None else 0.0
        return wait if wait > 0.0 else 0.0

    def acquire(self, conversation_id: str, tenant_id: str | None) -> None:
        """Record a send the caller has checked with `tenant_wait` and `conversation_wait`."""
        if self.try_acquire(conversation_id, tenant_id) > 0.0:
            raise RuntimeError(f"acquire() without budget for conversation {conversation_id!r}")

    def begin(self, conversation_id: str, tenant_id: str | None) -> None:
        """A send (checked with the waits) is going out now; it holds a slot until `complete`.

        Teams counts a request when it arrives, which is after we send it and before we see the answer.
        Counting it as "in flight" until the answer, then logging the answer's time, keeps every window
        that Teams can see within its limit, however much the network delays the request."""
        for log in self._logs(conversation_id, tenant_id):
            log.in_flight += 1

    def complete(self, conversation_id: str, tenant_id: str | None) -> None:
        """The send started by `begin` has been answered (or failed): log it at the answer's time."""
        now = self._clock.monotonic()
        logs = self._logs(conversation_id, tenant_id)
        for log in logs:
            log.in_flight = max(0, log.in_flight - 1)
            log.add(now)
        self._maybe_single(conversation_id, logs[0], now)

    def _conversation_log(self, conversation_id: str) -> _Log:
        """The conversation's log, made again from its one send if it was kept as that alone."""
        log = self._conversations.get(conversation_id)
        if log is None:
            log = self._conversations[conversation_id] = _Log(self._conversation.capacity)
            at = self._once.pop(conversation_id, None)
            if at is not None:
                log.times.append(at)
        return log

    def _maybe_single(self, conversation_id: str, log: _Log, now: float) -> None:
        """A conversation with one send in its log is forgotten once that send has left every window but the
        longest (see `forgotten_hourly`), so a broadcast to a million people does not keep a million logs;
        until then it is kept as that send's time alone (`_once`)."""
        if len(log.times) == 1 and not log.in_flight and log.blocked_until <= now:
            at = log.times[0]
            if self._forget_after is not None:
                self._singles.append((at, conversation_id))
            if self._compact:
                del self._conversations[conversation_id]
                self._once[conversation_id] = at
        singles, cutoff = self._singles, now - (self._forget_after or 0.0)
        while singles and singles[0][0] <= cutoff:
            at, key = singles.popleft()
            if self._once.get(key) == at:
                del self._once[key]
                continue
            old = self._conversations.get(key)
            if old is not None and old.in_flight == 0 and old.blocked_until <= now and old.times == [at]:
                del self._conversations[key]

    def _logs(self, conversation_id: str, tenant_id: str | None) -> list[_Log]:
        """The logs a send counts in: the conversation's (first), and its tenant's if it has one."""
        logs = [self._conversation_log(conversation_id)]
        if tenant_id is not None:
            logs.append(self._tenant_log(tenant_id))
        return logs

    def _tenant_log(self, tenant_id: str) -> _Log:
        log = self._tenants.get(tenant_id)
        if log is None:
            log = self._tenants[tenant_id] = _Log(self._tenant.capacity)
        return log

    def remember(self, conversation_id: str, tenant_id: str | None, ago_s: float) -> None:
        """Count a send made `ago_s` seconds ago (by another replica, before this one took its tenant over), so
        the windows start from what Teams has already seen. Call oldest first."""
        at = self._clock.monotonic() - max(0.0, ago_s)
        for log in self._logs(conversation_id, tenant_id):
            log.add(at)

    def penalize(
        self, conversation_id: str, tenant_id: str | None, retry_after: float, *, tenant_wide: bool = False
    ) -> None:
        """After a 429: nothing goes to the conversation (or, if `tenant_wide`, the tenant) for `retry_after` s.

        A penalty never shortens one already in force.
        """
        if not (retry_after >= 0 and math.isfinite(retry_after)):
            raise ValueError(f"retry_after must be a number of seconds >= 0, got {retry_after}")
        if tenant_wide:
            if tenant_id is None:
                raise ValueError("tenant_wide penalty needs a tenant_id")
            log = self._tenant_log(tenant_id)
        else:
            log = self._conversation_log(conversation_id)
        log.blocked_until = max(log.blocked_until, self._clock.monotonic() + retry_after)

    def forget_idle(self) -> int:
        """Drop keys with no send inside their longest window and no penalty in force; return how many."""
        now = self._clock.monotonic()
        dropped = 0
        for logs, limits in ((self._conversations, self._conversation), (self._tenants, self._tenant)):
            idle = [key for key, log in logs.items() if limits.is_idle(log, now)]
            for key in idle:
                del logs[key]
            dropped += len(idle)
        horizon = now - self._conversation.horizon
        idle = [key for key, at in self._once.items() if at <= horizon]
        for key in idle:
            del self._once[key]
        return dropped + len(idle)

    def _wait(self, conversation_id: str, tenant_id: str | None, now: float) -> float:
        wait = 0.0
        conversation = self._conversations.get(conversation_id)
        if conversation is not None:
            wait = self._conversation.wait(conversation, now)
        if tenant_id is not None:
            tenant = self._tenants.get(tenant_id)
            if tenant is not None:
                wait = max(wait, self._tenant.wait(tenant, now))
        return wait if wait > 0.0 else 0.0
