"""The seed's timings: 1, 2, 4 … minutes capped at one try a day; renew at day 60 of 90."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certbroker.backoff import MAX_RETRY, STORE_RETRY, renewal_time, retry_delay


@pytest.mark.parametrize(
    ("attempt", "seconds"),
    [(1, 60), (2, 120), (3, 240), (4, 480), (5, 960), (6, 1920), (10, 30720), (11, 61440)],
)
def test_retry_delay_doubles_from_one_minute(attempt: int, seconds: int) -> None:
    assert retry_delay(attempt) == timedelta(seconds=seconds)


@pytest.mark.parametrize("attempt", [12, 13, 20, 100, 5000])
def test_retry_delay_is_capped_at_one_try_a_day_from_attempt_12(attempt: int) -> None:
    assert retry_delay(attempt) == timedelta(days=1) == MAX_RETRY


def test_retry_delay_grows_monotonically_until_the_cap() -> None:
    delays = [retry_delay(n) for n in range(1, 40)]
    assert delays == sorted(delays)
    assert max(delays) == timedelta(days=1)


@pytest.mark.parametrize("attempt", [0, -1])
def test_no_failure_means_no_wait(attempt: int) -> None:
    assert retry_delay(attempt) == timedelta(0)


def test_renewal_is_day_60_of_a_90_day_certificate() -> None:
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert renewal_time(start, start + timedelta(days=90)) == start + timedelta(days=60)


def test_renewal_is_day_30_of_a_45_day_certificate() -> None:
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert renewal_time(start, start + timedelta(days=45)) == start + timedelta(days=30)


@pytest.mark.parametrize(
    ("attempt", "seconds"), [(0, 0), (1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (60, 300)]
)
def test_store_retry_doubles_from_one_second_to_five_minutes(attempt: int, seconds: int) -> None:
    assert STORE_RETRY.delay(attempt) == timedelta(seconds=seconds)
