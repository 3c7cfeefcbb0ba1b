"""The weekly CA quota, counted locally: None when it fits, else when the next slot frees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certbroker.quota import check
from certbroker.store.base import QuotaUsage

NOW = datetime(2026, 5, 10, 9, 30, tzinfo=UTC)


def test_under_the_limit_is_allowed() -> None:
    usage = QuotaUsage(count=49, oldest=NOW - timedelta(days=3))
    assert check(usage, 50, NOW, "QUOTA", "example.com") is None


def test_no_usage_is_allowed() -> None:
    assert check(QuotaUsage(count=0, oldest=None), 50, NOW, "QUOTA", "example.com") is None


def test_at_the_limit_waits_until_the_oldest_leaves_the_window() -> None:
    oldest = NOW - timedelta(days=2, hours=3)
    block = check(
        QuotaUsage(count=50, oldest=oldest), 50, NOW, "REGISTERED_DOMAIN_QUOTA", "example.com"
    )
    assert block is not None
    assert block.until == oldest + timedelta(days=7)
    assert block.reason == "REGISTERED_DOMAIN_QUOTA"
    assert "50 certificates for example.com" in block.message
    assert "(limit 50)" in block.message


def test_over_the_limit_is_blocked_too() -> None:
    oldest = NOW - timedelta(days=1)
    block = check(QuotaUsage(count=7, oldest=oldest), 5, NOW, "NAME_SET_QUOTA", "a.example.com")
    assert block is not None
    assert block.until == oldest + timedelta(days=7)
    assert "7 certificates" in block.message
    assert "(limit 5)" in block.message


def test_unknown_oldest_rechecks_in_a_minute() -> None:
    block = check(QuotaUsage(count=5, oldest=None), 5, NOW, "Q", "x")
    assert block is not None
    assert block.until == NOW + timedelta(minutes=1)


def test_oldest_already_out_of_the_window_rechecks_in_a_minute() -> None:
    block = check(QuotaUsage(count=5, oldest=NOW - timedelta(days=8)), 5, NOW, "Q", "x")
    assert block is not None
    assert block.until == NOW + timedelta(minutes=1)


def test_oldest_leaving_exactly_now_rechecks_in_a_minute() -> None:
    block = check(QuotaUsage(count=5, oldest=NOW - timedelta(days=7)), 5, NOW, "Q", "x")
    assert block is not None
    assert block.until == NOW + timedelta(minutes=1)
