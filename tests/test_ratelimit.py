"""TeamsRateLimiter: each window's limit, the tenant budget, atomicity, penalties, forgetting, and a greedy
simulation checked against Teams' nominal limits by an independent brute-force counter."""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections import defaultdict

import pytest

from scheduler.ratelimit import TEAMS_CONVERSATION_WINDOWS, TeamsRateLimiter, Window
from state.clock import FakeClock

MARGIN = 0.02


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def send_until_refused(limiter: TeamsRateLimiter, conversation: str, tenant: str | None) -> tuple[int, float]:
    """Acquire at the current instant until refused; return (sends, the refusal's wait)."""
    sent = 0
    while (wait := limiter.try_acquire(conversation, tenant)) == 0.0:
        sent += 1
        assert sent <= 10_000, "limiter never refused"
    return sent, wait


@pytest.mark.parametrize("window", TEAMS_CONVERSATION_WINDOWS, ids=lambda w: f"{w.limit}per{w.seconds:g}s")
@pytest.mark.parametrize("margin", [0.0, MARGIN])
def test_each_conversation_window_holds_exactly_its_limit(clock: FakeClock, window: Window, margin: float) -> None:
    limiter = TeamsRateLimiter(clock, conversation_windows=(window,), tenant_rps=10_000, margin=margin)
    stretched = window.seconds * (1 + margin)
    # Spread the limit over the first half of the window, then the next send must wait for the first to age out.
    step = window.seconds / 2 / window.limit
    start = clock.monotonic()
    for _ in range(window.limit):
        assert limiter.try_acquire("c", "t") == 0.0
        clock.advance(step)
    elapsed = clock.monotonic() - start
    assert limiter.wait_time("c", "t") == pytest.approx(stretched - elapsed)
    assert limiter.try_acquire("c", "t") == pytest.approx(stretched - elapsed)
    clock.advance(limiter.wait_time("c", "t"))
    assert limiter.try_acquire("c", "t") == 0.0
    # The window is full again; the next slot opens when the second send ages out.
    assert limiter.try_acquire("c", "t") == pytest.approx(step)


def test_teams_windows_together_on_a_burst(clock: FakeClock) -> None:
    limiter = TeamsRateLimiter(clock)
    assert send_until_refused(limiter, "c", "t") == (7, pytest.approx(1.02))
    clock.advance(1.02)
    assert send_until_refused(limiter, "c", "t") == (1, pytest.approx(1.02))  # 8 per 2 s binds
    clock.advance(1.02)
    assert send_until_refused(limiter, "c", "t")[0] == 7


def test_tenant_budget_is_shared_by_its_conversations(clock: FakeClock) -> None:
    limiter = TeamsRateLimiter(clock)
    for i in range(50):
        assert limiter.try_acquire(f"c{i}", "t") == 0.0
    assert limiter.try_acquire("c50", "t") == pytest.approx(1.02)
    assert limiter.try_acquire("c0", "other-tenant") == 0.0
    assert limiter.try_acquire("c51", None) == 0.0  # no tenant, no tenant budget
    clock.advance(1.02)
    assert limiter.try_acquire("c50", "t") == 0.0


@pytest.mark.parametrize(("rps", "per_second"), [(30, 30), (30.9, 30), (1, 1)])
def test_tenant_rate_is_configurable(clock: FakeClock, rps: float, per_second: int) -> None:
    limiter = TeamsRateLimiter(clock, tenant_rps=rps)
    sent = sum(limiter.try_acquire(f"c{i}", "t") == 0.0 for i in range(per_second + 5))
    assert sent == per_second


def test_busy_conversation_does_not_delay_another(clock: FakeClock) -> None:
    limiter = TeamsRateLimiter(clock)
    assert send_until_refused(limiter, "busy", "t")[0] == 7
    assert limiter.wait_time("busy", "t") > 0
    assert limiter.wait_time("quiet", "t") == 0.0
    assert send_until_refused(limiter, "quiet", "t")[0] == 7


def test_tenant_refusal_records_nothing_for_the_conversation(clock: FakeClock) -> None:
    limiter = TeamsRateLimiter(clock, conversation_windows=(Window(1, 3600),), tenant_rps=2)
    assert limiter.try_acquire("a", "t") == 0.0
    assert limiter.try_acquire("b", "t") == 0.0
    for _ in range(5):
        assert limiter.try_acquire("c", "t") == pytest.approx(1.02)  # tenant full
    clock.advance(1.02)
    # Had a refused attempt been recorded for "c", its 1-per-hour window would refuse now.
    assert limiter.try_acquire("c", "t") == 0.0


def test_conversation_refusal_records_nothing_for_the_tenant(clock: FakeClock) -> None:
    limiter = TeamsRateLimiter(clock, conversation_windows=(Window(1, 3600),), tenant_rps=2)
    assert limiter.try_acquire("a", "t") == 0.0
    for _ in range(5):
        assert limiter.try_acquire("a", "t") > 1000
    assert limiter.try_acquire("b", "t") == 0.0  # the tenant still had room for exactly one more
    assert limiter.try_acquire("c", "t") == pytest.approx(1.02)


def test_wait_time_records_nothing(clock: FakeClock) -> None:
    limiter = TeamsRateLimiter(clock)
    for _ in range(100):
        assert limiter.wait_time("c", "t") == 0.0
    assert send_until_refused(limiter, "c", "t")[0] == 7


def test_penalize_a_conversation(clock: FakeClock) -> None:
    limiter = TeamsRateLimiter(clock)
    limiter.penalize("c", "t", 10.0)
    assert limiter.try_acquire("c", "t") == pytest.approx(10.0)
    assert limiter.try_acquire("other", "t") == 0.0
    limiter.penalize("c", "t", 3.0)  # a shorter Retry-After does not shorten the penalty
    clock.advance(9.0)
    assert limiter.wait_time("c", "t") == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.try_acquire("c", "t") == 0.0


def test_penalty_and_windows_take_the_longer_wait(clock: FakeClock) -> None:
    limiter = TeamsRateLimiter(clock)
    send_until_refused(limiter, "c", "t")
    limiter.penalize("c", "t", 0.5)
    assert limiter.wait_time("c", "t") == pytest.approx(1.02)
    limiter.penalize("c", "t", 5.0)
    assert limiter.wait_time("c", "t") == pytest.approx(5.0)


def test_penalize_a_whole_tenant(clock: FakeClock) -> None:
    limiter = TeamsRateLimiter(clock)
    limiter.penalize("c", "t", 4.0, tenant_wide=True)
    assert limiter.wait_time("c", "t") == pytest.approx(4.0)
    assert limiter.try_acquire("never-seen", "t") == pytest.approx(4.0)
    assert limiter.try_acquire("c", "other-tenant") == 0.0
    clock.advance(4.0)
    assert limiter.try_acquire("never-seen", "t") == 0.0


@pytest.mark.parametrize("retry_after", [-1.0, math.inf, math.nan])
def test_penalize_rejects_bad_retry_after(clock: FakeClock, retry_after: float) -> None:
    with pytest.raises(ValueError, match="retry_after"):
        TeamsRateLimiter(clock).penalize("c", "t", retry_after)


def test_tenant_wide_penalty_needs_a_tenant(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        TeamsRateLimiter(clock).penalize("c", None, 1.0, tenant_wide=True)


@pytest.mark.parametrize(
    "kwargs",
    [{"tenant_rps": 0.5}, {"tenant_rps": math.inf}, {"margin": -0.1}, {"conversation_windows": ()}],
    ids=str,
)
def test_bad_configuration_is_rejected(clock: FakeClock, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TeamsRateLimiter(clock, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("limit", "seconds"), [(0, 1.0), (1, 0.0), (1, -1.0), (1, math.inf)])
def test_bad_window_is_rejected(limit: int, seconds: float) -> None:
    with pytest.raises(ValueError, match="Window"):
        Window(limit, seconds)


def test_forget_idle_drops_only_keys_with_nothing_in_their_longest_window(clock: FakeClock) -> None:
    limiter = TeamsRateLimiter(clock)
    send_until_refused(limiter, "c1", "t1")
    assert limiter.try_acquire("c2", "t2") == 0.0
    limiter.penalize("penalized", None, 7200.0)
    assert limiter.forget_idle() == 0
    clock.advance(1.02)  # the tenants' only window (1 s) is empty now; the conversations' hour is not
    assert limiter.forget_idle() == 2
    clock.advance(3600 * 1.02 - 1.02 - 0.001)
    assert limiter.forget_idle() == 0
    clock.advance(0.001)
    assert limiter.forget_idle() == 2  # c1, c2; "penalized" stays until its penalty ends
    assert limiter.wait_time("penalized", None) > 0
    clock.advance(7200)
    assert limiter.forget_idle() == 1
    assert limiter.forget_idle() == 0
    assert send_until_refused(limiter, "c1", "t1")[0] == 7


# --- Greedy simulation against an independent checker ------------------------------------------------------

NOMINAL_CONVERSATION = ((7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0))
NOMINAL_TENANT_PER_SECOND = 50


def most_in_any_span(times: list[float], seconds: float) -> int:
    """Most sends inside any closed span [t, t + seconds] (the worst span starts at a send)."""
    ordered = sorted(times)
    return max((bisect_right(ordered, t + seconds) - i for i, t in enumerate(ordered)), default=0)


def simulate_greedy(
    limiter: TeamsRateLimiter,
    clock: FakeClock,
    tenant_of: dict[str, str | None],
    seconds: float,
    rng: random.Random,
    jitter: float,
) -> dict[str, list[float]]:
    """Send whenever allowed, otherwise advance to the earliest wait (plus random jitter); return send times."""
    sent: dict[str, list[float]] = defaultdict(list)
    conversations = list(tenant_of)
    end = clock.monotonic() + seconds
    while clock.monotonic() < end:
        rng.shuffle(conversations)
        earliest = math.inf
        for conversation in conversations:
            wait = limiter.try_acquire(conversation, tenant_of[conversation])
            if wait == 0.0:
                sent[conversation].append(clock.monotonic())
            earliest = min(earliest, wait)
        if earliest > 0.0:  # nobody could send: the worker's single timer fires
            clock.advance(earliest + rng.uniform(0, jitter))
    return sent


def assert_within_teams_limits(sent: dict[str, list[float]], tenant_of: dict[str, str | None]) -> None:
    by_tenant: dict[str, list[float]] = defaultdict(list)
    for conversation, times in sent.items():
        for limit, seconds in NOMINAL_CONVERSATION:
            worst = most_in_any_span(times, seconds)
            assert worst <= limit, f"{conversation}: {worst} sends within {seconds} s (limit {limit})"
        tenant = tenant_of[conversation]
        if tenant is not None:
            by_tenant[tenant].extend(times)
    for tenant, times in by_tenant.items():
        worst = most_in_any_span(times, 1.0)
        assert worst <= NOMINAL_TENANT_PER_SECOND, f"tenant {tenant}: {worst} sends within 1 s"


@pytest.mark.parametrize(("seed", "jitter"), [(1, 0.0), (2, 0.0), (3, 0.05), (4, 0.3)])
def test_greedy_fan_out_never_exceeds_teams_limits(clock: FakeClock, seed: int, jitter: float) -> None:
    rng = random.Random(seed)
    tenant_of: dict[str, str | None] = {f"big{i}": "big" for i in range(40)}
    tenant_of |= {f"small{i}": "small" for i in range(rng.randint(1, 30))}
    tenant_of |= {"no-tenant": None}
    limiter = TeamsRateLimiter(clock)
    seconds = 120.0
    sent = simulate_greedy(limiter, clock, tenant_of, seconds, rng, jitter)

    assert_within_teams_limits(sent, tenant_of)
    if jitter == 0.0:
        big_tenant = sum(len(times) for conversation, times in sent.items() if tenant_of[conversation] == "big")
        assert big_tenant >= 0.95 * NOMINAL_TENANT_PER_SECOND * seconds


def test_greedy_conversations_over_hours_respect_the_hourly_window(clock: FakeClock) -> None:
    tenant_of: dict[str, str | None] = {"a": "t", "b": "t", "c": None}
    limiter = TeamsRateLimiter(clock)
    hours = 2.5
    sent = simulate_greedy(limiter, clock, tenant_of, hours * 3600, random.Random(5), 0.0)

    assert_within_teams_limits(sent, tenant_of)
    for times in sent.values():
        # the hourly window is what binds: Teams' 1800 less the 120 sends forgetting may leave out (see below)
        assert most_in_any_span(times, 3600) == 1680
        assert len(times) >= 0.95 * 1680 * hours


def test_one_send_conversations_are_forgotten_once_only_the_hour_could_count_them(clock: FakeClock) -> None:
    """A broadcast sends once to each of many conversations: the limiter keeps a log only for those sent to in
    the last 30 s (the second-longest window), so its memory follows the send rate, not the audience."""
    limiter = TeamsRateLimiter(clock, tenant_rps=10_000)
    for n in range(10_000):
        limiter.begin(f"c{n}", "t")
        clock.advance(0.01)  # 100 sends a second
        limiter.complete(f"c{n}", "t")
    assert len(limiter._conversations) + len(limiter._once) <= 30.6 * 100 + 2
    assert not limiter._conversations, "one send each: kept as its time alone, no log"
    # a conversation sent to twice keeps its log (its sends may add up to a window's limit)
    limiter.begin("busy", "t")
    limiter.complete("busy", "t")
    limiter.begin("busy", "t")
    limiter.complete("busy", "t")
    clock.advance(60)
    limiter.begin("other", "t")
    limiter.complete("other", "t")
    assert "busy" in limiter._conversations and "c0" not in limiter._conversations
    assert send_until_refused(limiter, "c0", "t")[0] == 7, "a forgotten conversation starts again within its limits"


def test_a_conversation_kept_as_its_one_send_still_counts_that_send(clock: FakeClock) -> None:
    """The compact form of a one-send conversation loses nothing: the send counts in every window when more come,
    and a penalty or a send remembered from another replica start from it."""
    limiter = TeamsRateLimiter(clock, tenant_rps=10_000)
    for conversation in ("a", "b", "c"):
        limiter.begin(conversation, "t")
        limiter.complete(conversation, "t")
    assert set(limiter._once) == {"a", "b", "c"} and not limiter._conversations
    assert limiter.wait_time("a", "t") == 0.0
    assert send_until_refused(limiter, "a", "t")[0] == 6, "7 a second, one of them already sent"
    limiter.remember("c", "t", 0.0)
    assert send_until_refused(limiter, "c", "t")[0] == 5, "its send, the remembered one, and 5 more"
    limiter.penalize("b", "t", 5.0)
    assert 4.9 < limiter.wait_time("b", "t") <= 5.0
    clock.advance(5.0)
    assert send_until_refused(limiter, "b", "t")[0] == 7, "the first send left the 1-s window meanwhile"


def test_the_hour_allows_teams_1800_less_what_forgetting_can_miss_and_no_more(clock: FakeClock) -> None:
    """Worst case for forgetting: one send every 31 s for an hour (each forgotten), then as many as allowed."""
    limiter = TeamsRateLimiter(clock, tenant_rps=10_000)
    times: list[float] = []
    for _ in range(115):
        assert limiter.try_acquire("c", "t") == 0.0
        times.append(clock.monotonic())
        clock.advance(31)
        limiter.try_acquire("other", "t")  # any later activity sweeps the forgotten logs
    while len(times) < 3000:
        wait = limiter.try_acquire("c", "t")
        if wait == 0.0:
            times.append(clock.monotonic())
        else:
            clock.advance(min(wait, 5.0))
    assert most_in_any_span(times, 3600) <= 1800


def test_split_waits_match_the_combined_wait_and_acquire_records() -> None:
    clock = FakeClock()
    limiter = TeamsRateLimiter(clock, tenant_rps=2, margin=0.0)
    limiter.acquire("a", "t")
    limiter.acquire("b", "t")
    assert limiter.tenant_wait("t") == pytest.approx(1.0)
    assert limiter.conversation_wait("c") == 0.0
    assert limiter.wait_time("c", "t") == pytest.approx(1.0)
    with pytest.raises(RuntimeError):
        limiter.acquire("c", "t")
    clock.advance(1.0)
    assert limiter.tenant_wait("t") == 0.0


def test_in_flight_sends_hold_their_slot_until_answered() -> None:
    clock = FakeClock()
    limiter = TeamsRateLimiter(clock, tenant_rps=3, margin=0.0)
    for i in range(3):
        assert limiter.tenant_wait("t") == 0.0
        limiter.begin(f"c{i}", "t")
    assert limiter.tenant_wait("t") == math.inf, "all slots are in flight: only an answer frees one"
    clock.advance(0.4)
    limiter.complete("c0", "t")
    assert limiter.tenant_wait("t") == pytest.approx(1.0), "the freed slot counts from the answer's time"
    clock.advance(1.0)
    assert limiter.tenant_wait("t") == 0.0


def test_network_delay_never_lets_a_teams_window_overflow() -> None:
    """Greedy sends whose requests reach Teams after a random delay: count them where Teams does."""
    rng = random.Random(11)
    clock = FakeClock()
    limiter = TeamsRateLimiter(clock, tenant_rps=50)
    arrivals: list[float] = []
    completions: list[tuple[float, str]] = []  # (time, conversation)
    sent = 0
    while clock.monotonic() < 1000 + 60:
        completions.sort()
        while completions and completions[0][0] <= clock.monotonic():
            _, conversation = completions.pop(0)
            limiter.complete(conversation, "t")
        conversation = f"c{sent}"
        wait = limiter.tenant_wait("t")
        if wait == 0.0:
            limiter.begin(conversation, "t")
            arrival = clock.monotonic() + rng.uniform(0.0, 0.3)
            arrivals.append(arrival)
            completions.append((arrival + rng.uniform(0.0, 0.05), conversation))
            sent += 1
            continue
        next_completion = min((t for t, _ in completions), default=math.inf)
        clock.advance(max(1e-6, min(wait, next_completion - clock.monotonic())))
    arrivals.sort()
    worst = max(bisect_right(arrivals, a + 1.0 - 1e-9) - i for i, a in enumerate(arrivals))
    assert worst <= 50, f"Teams would have seen {worst} requests in one second"
    # a slot is busy for 1 s plus the round trip (here 0.175 s on average): ~85% of 50/s
    assert sent >= 0.8 * 50 * 60, f"throughput too low: {sent} in 60 s"
