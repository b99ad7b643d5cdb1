"""Local time as the user lives it: zone names, short names, quiet hours and digest times across DST."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from state.model import (
    DAILY_DIGEST,
    QUIET_HOURS,
    NotificationSettings,
    QuietHours,
    in_quiet_hours,
    local_time,
    next_local,
    parse_clock,
    release_time,
    timezone_name,
)

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(("given", "expected"), [
    ("Europe/Berlin", "Europe/Berlin"), ("europe/berlin", "Europe/Berlin"), (" America/New_York ", "America/New_York"),
    ("UTC", "UTC"), ("Mars/Olympus_Mons", None), ("", None), (None, None), (42, None), ("../../etc/passwd", None),
    ("x" * 100, None),
])
def test_invalid_zones_are_ignored_not_errors(given: object, expected: str | None) -> None:
    assert timezone_name(given) == expected


def test_times_are_shown_with_the_zones_short_name() -> None:
    assert local_time(utc(2026, 11, 30, 5, 42), BERLIN) == "2026-11-30 06:42 CET"
    assert local_time(utc(2026, 7, 1, 5, 42), BERLIN) == "2026-07-01 07:42 CEST"
    assert local_time(utc(2026, 7, 1, 5, 42), None) == "2026-07-01 05:42 UTC"
    assert local_time(utc(2026, 7, 1, 5, 42), "Not/AZone") == "2026-07-01 05:42 UTC"


@pytest.mark.parametrize(("text", "expected"), [
    ("7", "07:00"), ("7:30", "07:30"), ("07.30", "07:30"), ("22h", "22:00"), ("24:00", None), ("7:60", None),
    ("noon", None),
])
def test_clock_times(text: str, expected: str | None) -> None:
    assert parse_clock(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("22:00-07:00", QuietHours("22:00", "07:00")), ("22-7", QuietHours("22:00", "07:00")),
    ("23:30 to 6:15", QuietHours("23:30", "06:15")), ("13:00–14:00", QuietHours("13:00", "14:00")),
    ("7-7", None), ("tonight", None), ("22:00", None),
])
def test_quiet_hour_ranges(text: str, expected: QuietHours | None) -> None:
    assert QuietHours.parse(text) == expected


def test_quiet_hours_span_midnight_start_included_end_excluded() -> None:
    quiet = QuietHours("22:00", "07:00")
    assert in_quiet_hours(utc(2026, 1, 1, 21, 0), quiet, BERLIN)  # 22:00 CET
    assert in_quiet_hours(utc(2026, 1, 2, 5, 59), quiet, BERLIN)  # 06:59 CET
    assert not in_quiet_hours(utc(2026, 1, 2, 6, 0), quiet, BERLIN)  # 07:00 CET
    assert not in_quiet_hours(utc(2026, 1, 1, 20, 59), quiet, BERLIN)
    assert in_quiet_hours(utc(2026, 1, 1, 12, 30), QuietHours("12:00", "14:00"), "UTC")


def test_quiet_hours_end_at_local_seven_on_both_sides_of_daylight_saving() -> None:
    quiet = NotificationSettings(timezone=BERLIN, quiet=QuietHours("22:00", "07:00"))
    # spring forward (29 March 2026, 02:00 CET → 03:00 CEST): 07:00 CEST is 05:00 UTC
    assert release_time(utc(2026, 3, 28, 23, 0), quiet) == (utc(2026, 3, 29, 5, 0), QUIET_HOURS)
    # the night before: 07:00 CET is 06:00 UTC
    assert release_time(utc(2026, 3, 27, 23, 0), quiet) == (utc(2026, 3, 28, 6, 0), QUIET_HOURS)
    # fall back (25 October 2026, 03:00 CEST → 02:00 CET): 07:00 CET is 06:00 UTC
    assert release_time(utc(2026, 10, 24, 23, 0), quiet) == (utc(2026, 10, 25, 6, 0), QUIET_HOURS)
    assert release_time(utc(2026, 10, 25, 12, 0), quiet) is None  # outside quiet hours: now


def test_a_skipped_or_repeated_wall_clock_time_still_happens_once() -> None:
    # 02:30 does not exist on 29 March in Berlin: it happens at the offset before the change (03:30 CEST)
    assert next_local(utc(2026, 3, 28, 23, 0), "02:30", BERLIN) == utc(2026, 3, 29, 1, 30)
    # 02:30 happens twice on 25 October: the first time (CEST) counts
    assert next_local(utc(2026, 10, 24, 22, 0), "02:30", BERLIN) == utc(2026, 10, 25, 0, 30)


def test_daily_digest_is_next_at_its_local_time_and_moves_out_of_quiet_hours() -> None:
    digest = NotificationSettings(timezone=BERLIN, digest_at="09:00")
    assert release_time(utc(2026, 1, 1, 7, 0), digest) == (utc(2026, 1, 1, 8, 0), DAILY_DIGEST)
    assert release_time(utc(2026, 1, 1, 8, 0), digest) == (utc(2026, 1, 2, 8, 0), DAILY_DIGEST)  # just sent
    assert release_time(utc(2026, 7, 1, 6, 0), digest) == (utc(2026, 7, 1, 7, 0), DAILY_DIGEST)  # CEST
    both = NotificationSettings(timezone=BERLIN, digest_at="06:00", quiet=QuietHours("22:00", "07:00"))
    assert release_time(utc(2026, 1, 1, 12, 0), both) == (utc(2026, 1, 2, 6, 0), DAILY_DIGEST)  # 07:00 CET


def test_nothing_chosen_means_now() -> None:
    assert release_time(utc(2026, 1, 1, 3, 0), NotificationSettings()) is None
