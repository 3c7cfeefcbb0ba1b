"""Pacing the scheduler while the store fails: rounds, pauses, health, sparse logs, holds."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from certbroker.errors import StoreUnavailable
from certbroker.store_health import Holds, StoreHealth

T0 = datetime(2026, 5, 1, tzinfo=UTC)
S = timedelta(seconds=1)
FULL = StoreUnavailable("the disk is full", reason="STORE_FULL")


def test_failures_close_together_are_one_round_and_pause_everything() -> None:
    health = StoreHealth()
    for _ in range(32):  # every step in flight when the disk filled
        health.failed(FULL, T0)
    assert health.suspect and health.healthy
    assert health.resume_at(T0) == T0 + S
    assert health.resume_at(T0 + S) is None  # then one probe


def test_three_failing_rounds_make_it_unhealthy_and_a_success_heals() -> None:
    health = StoreHealth()
    now = T0
    for pause in (1, 2):
        health.failed(FULL, now)
        assert health.healthy
        now += pause * S
    health.failed(FULL, now)
    assert not health.healthy
    assert health.resume_at(now) == now + 4 * S
    health.succeeded(now + 4 * S)
    assert health.healthy and not health.suspect
    assert health.resume_at(now + 4 * S) is None


def test_the_pause_doubles_to_five_minutes() -> None:
    health = StoreHealth()
    now = T0
    pauses = []
    for _ in range(12):
        health.failed(FULL, now)
        resume = health.resume_at(now)
        assert resume is not None
        pauses.append(resume - now)
        now = resume
    assert pauses[:4] == [S, 2 * S, 4 * S, 8 * S]
    assert pauses[-1] == timedelta(minutes=5)


def test_failures_are_logged_once_per_interval_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="certbroker.store_health")
    health = StoreHealth(log_every=timedelta(seconds=30))
    for second in range(0, 61):
        health.failed(FULL, T0 + second * S)
    warnings = [r for r in caplog.records if "cannot record" in r.getMessage()]
    assert len(warnings) == 3  # at 0, 30 and 60 s
    assert "STORE_FULL" in warnings[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    health.succeeded(T0 + 61 * S)
    assert "takes writes again" in caplog.records[-1].getMessage()


def test_a_domain_hold_grows_per_domain_and_is_released() -> None:
    holds = Holds()
    assert holds.hold("a.example", T0) == T0 + S
    assert holds.hold("a.example", T0 + S) == T0 + 3 * S
    assert holds.hold("b.example", T0) == T0 + S
    assert holds.held(T0 + S / 2) == {"a.example", "b.example"}
    assert holds.held(T0 + 2 * S) == {"a.example"}
    assert holds.next_release(T0 + 2 * S) == T0 + 3 * S
    holds.release("a.example")
    assert holds.held(T0 + 2 * S) == set()


def test_long_expired_holds_are_forgotten() -> None:
    holds = Holds()
    holds.hold("gone.example", T0)
    assert len(holds) == 1
    holds.held(T0 + timedelta(minutes=6))
    assert len(holds) == 0
