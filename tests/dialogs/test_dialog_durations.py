"""Mute durations: what is accepted, what is refused (with the hint), and how they read back."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dialogs.durations import DURATION_HINT, DurationError, describe_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", timedelta(hours=2)),
        ("30m", timedelta(minutes=30)),
        ("1d", timedelta(days=1)),
        ("90 minutes", timedelta(minutes=90)),
        ("1 hour", timedelta(hours=1)),
        ("for 2 hours", timedelta(hours=2)),
        ("45 MIN", timedelta(minutes=45)),
        ("3 hrs.", timedelta(hours=3)),
        ("1m", timedelta(minutes=1)),
        ("30 days", timedelta(days=30)),
        ("720h", timedelta(days=30)),
    ],
)
def test_parse_duration_accepts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "can't read"),
        ("soon", "can't read `soon`"),
        ("2 weeks", "can't read"),
        ("1.5h", "can't read"),
        ("-2h", "can't read"),
        ("h", "can't read"),
        ("until tomorrow", "can't read"),
        ("0m", "1 minute up to 30 days"),
        ("31d", "1 minute up to 30 days"),
        ("721h", "1 minute up to 30 days"),
        ("9999999999d", "can't read"),
    ],
)
def test_parse_duration_rejects(text: str, fragment: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(text)
    assert fragment in str(caught.value)
    assert DURATION_HINT in str(caught.value)


@pytest.mark.parametrize(
    ("duration", "wording"),
    [
        (timedelta(minutes=1), "1 minute"),
        (timedelta(minutes=90), "1 hour 30 minutes"),
        (timedelta(hours=2), "2 hours"),
        (timedelta(days=1, hours=3), "1 day 3 hours"),
        (timedelta(days=30), "30 days"),
    ],
)
def test_describe_duration(duration: timedelta, wording: str) -> None:
    assert describe_duration(duration) == wording
