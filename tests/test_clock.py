"""Injected time: FakeClock sleepers wake on the deadline or the wake event; naive refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from certbroker.clock import FakeClock, SystemClock, utc

START = datetime(2026, 1, 1, tzinfo=UTC)


async def _settle() -> None:
    """Let every ready task run (no wall-clock waiting)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_fake_sleep_until_wakes_only_once_advanced_past_the_deadline() -> None:
    clock = FakeClock(START)
    sleeper = asyncio.create_task(clock.sleep_until(START + timedelta(seconds=10)))
    await _settle()
    assert not sleeper.done()
    clock.advance(timedelta(seconds=9))
    await _settle()
    assert not sleeper.done()
    clock.advance(timedelta(seconds=2))
    await asyncio.wait_for(sleeper, 1)
    assert clock.now() == START + timedelta(seconds=11)


async def test_fake_sleep_until_wakes_exactly_at_the_deadline() -> None:
    clock = FakeClock(START)
    sleeper = asyncio.create_task(clock.sleep_until(START + timedelta(minutes=1)))
    await _settle()
    clock.set(START + timedelta(minutes=1))
    await asyncio.wait_for(sleeper, 1)


async def test_fake_sleep_until_a_past_deadline_returns_at_once() -> None:
    clock = FakeClock(START)
    await asyncio.wait_for(clock.sleep_until(START - timedelta(seconds=1)), 1)


async def test_fake_sleep_until_wakes_when_the_wake_event_is_set() -> None:
    clock = FakeClock(START)
    wake = asyncio.Event()
    sleeper = asyncio.create_task(clock.sleep_until(START + timedelta(days=1), wake))
    await _settle()
    assert not sleeper.done()
    wake.set()
    await asyncio.wait_for(sleeper, 1)
    assert clock.now() == START


async def test_fake_sleep_until_with_wake_already_set_returns_at_once() -> None:
    clock = FakeClock(START)
    wake = asyncio.Event()
    wake.set()
    await asyncio.wait_for(clock.sleep_until(START + timedelta(days=1), wake), 1)


async def test_many_fake_sleepers_wake_in_deadline_order() -> None:
    clock = FakeClock(START)
    woke: list[int] = []

    async def sleeper(n: int) -> None:
        await clock.sleep_until(START + timedelta(seconds=n))
        woke.append(n)

    tasks = [asyncio.create_task(sleeper(n)) for n in (3, 1, 2)]
    await _settle()
    for _ in range(3):
        clock.advance(timedelta(seconds=1))
        await _settle()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert woke == [1, 2, 3]


def test_fake_clock_set_refuses_a_naive_datetime() -> None:
    clock = FakeClock(START)
    with pytest.raises(ValueError, match="aware"):
        clock.set(datetime(2026, 1, 2))
    assert clock.now() == START


def test_fake_clock_refuses_a_naive_start() -> None:
    with pytest.raises(ValueError, match="naive"):
        FakeClock(datetime(2026, 1, 1))


def test_fake_clock_start_is_converted_to_utc() -> None:
    start = datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    now = FakeClock(start).now()
    assert now == start
    assert now.utcoffset() == timedelta(0)


def test_fake_clock_defaults_to_aware_utc() -> None:
    assert FakeClock().now().tzinfo is not None


def test_utc_refuses_naive_and_converts_aware() -> None:
    with pytest.raises(ValueError, match="naive"):
        utc(datetime(2026, 1, 1))
    paris = datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    converted = utc(paris)
    assert converted == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert converted.utcoffset() == timedelta(0)


def test_system_clock_is_aware_utc() -> None:
    now = SystemClock().now()
    assert now.utcoffset() == timedelta(0)


async def test_system_clock_sleep_until_past_deadline_returns_at_once() -> None:
    clock = SystemClock()
    await asyncio.wait_for(clock.sleep_until(clock.now() - timedelta(seconds=5)), 1)


async def test_system_clock_sleep_until_wakes_on_the_event() -> None:
    clock = SystemClock()
    wake = asyncio.Event()
    sleeper = asyncio.create_task(clock.sleep_until(clock.now() + timedelta(hours=1), wake))
    await _settle()
    assert not sleeper.done()
    wake.set()
    await asyncio.wait_for(sleeper, 1)
