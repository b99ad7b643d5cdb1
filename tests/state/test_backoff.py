"""The one exponential backoff (state/clock.py) every retry loop uses."""

from __future__ import annotations

import pytest

from state.clock import backoff_s


def test_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_s(n, 0.5, 5.0) for n in range(0, 7)] == [0.5, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize("failures", [61, 1_100, 10**6, 10**18])
def test_any_number_of_failures_in_a_row_gives_the_cap(failures: int) -> None:
    assert backoff_s(failures, 0.5, 300.0) == 300.0
    assert backoff_s(failures, 5.0, 300.0) == 300.0
