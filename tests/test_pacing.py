"""LoopPacing: sends in flight give way while the event loop lags, and come back when it is quick again."""

from __future__ import annotations

from bot.delivery.pacing import LoopPacing


def test_the_limit_halves_while_the_loop_lags_and_grows_back_step_by_step() -> None:
    pacing = LoopPacing(64, floor=4, step=4, high_s=0.02, low_s=0.005)
    pacing.observe(0.05)
    assert pacing.limit == 32
    for _ in range(10):
        pacing.observe(0.2)
    assert pacing.limit == 4, "never under the floor: a broadcast still moves"
    pacing.observe(0.01)
    assert pacing.limit == 4, "between the thresholds nothing changes"
    pacing.observe(0.001)
    assert pacing.limit == 8
    for _ in range(100):
        pacing.observe(0.0)
    assert pacing.limit == 64, "never over the configured maximum"


def test_a_small_maximum_is_its_own_floor() -> None:
    pacing = LoopPacing(2, floor=4)
    pacing.observe(1.0)
    assert pacing.limit == 2
