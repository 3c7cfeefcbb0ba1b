"""Doctor admission: once per domain per interval, a few at once, bounded memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certbroker.doctor.limit import DoctorLimit
from certbroker.errors import ResourceExhausted

T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
TEN = timedelta(seconds=10)


def test_same_domain_waits_for_the_interval_and_is_told_how_long() -> None:
    limit = DoctorLimit(TEN)
    with limit.admit("a.example", T0):
        pass
    with (
        pytest.raises(ResourceExhausted) as early,
        limit.admit("a.example", T0 + timedelta(seconds=4)),
    ):
        pass
    assert early.value.reason == "DOCTOR_RATE_LIMITED"
    assert early.value.retry_after == timedelta(seconds=6)
    with limit.admit("b.example", T0 + timedelta(seconds=4)):  # another name is free
        pass
    with limit.admit("a.example", T0 + TEN):  # the interval has passed
        pass


def test_at_most_max_running_at_once() -> None:
    limit = DoctorLimit(TEN, max_running=2)
    with limit.admit("a.example", T0), limit.admit("b.example", T0):
        with pytest.raises(ResourceExhausted) as busy, limit.admit("c.example", T0):
            pass
        assert busy.value.reason == "DOCTOR_BUSY"
        assert busy.value.retry_after == timedelta(seconds=1)
    assert limit.running == 0
    with limit.admit("c.example", T0):  # slots are given back, even after an error
        pass


def test_a_failed_run_still_counts_and_frees_its_slot() -> None:
    limit = DoctorLimit(TEN, max_running=1)
    with pytest.raises(RuntimeError), limit.admit("a.example", T0):
        raise RuntimeError("check blew up")
    assert limit.running == 0
    with pytest.raises(ResourceExhausted), limit.admit("a.example", T0 + timedelta(seconds=1)):
        pass


def test_memory_is_bounded_and_ages_out() -> None:
    limit = DoctorLimit(TEN, max_remembered=3)
    for i in range(3):
        with limit.admit(f"n{i}.example", T0):
            pass
    with pytest.raises(ResourceExhausted) as full, limit.admit("n3.example", T0):
        pass
    assert full.value.reason == "DOCTOR_BUSY"
    with limit.admit("n3.example", T0 + TEN):  # the first three aged out
        pass
