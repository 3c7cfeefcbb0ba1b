"""Injected time. No module reads ``datetime.now()`` itself; all times are aware UTC."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, aware UTC."""
        ...

    async def sleep_until(self, when: datetime, wake: asyncio.Event | None = None) -> None:
        """Return once ``now() >= when``, or earlier when ``wake`` is set."""
        ...


async def _wait(event: asyncio.Event | None, seconds: float) -> None:
    if event is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime, wake: asyncio.Event | None = None) -> None:
        seconds = max(0.0, (when - self.now()).total_seconds())
        await _wait(wake, seconds)


class FakeClock:
    """A clock tests move by hand; sleepers wake when it passes their deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = utc(start) if start is not None else datetime(2026, 1, 1, tzinfo=UTC)
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self.set(self._now + delta)

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = when
        self._moved.set()
        self._moved = asyncio.Event()

    async def sleep_until(self, when: datetime, wake: asyncio.Event | None = None) -> None:
        while self._now < when and not (wake is not None and wake.is_set()):
            moved = self._moved
            waiters = [asyncio.ensure_future(moved.wait())]
            if wake is not None:
                waiters.append(asyncio.ensure_future(wake.wait()))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when the sleeper itself is cancelled: leave no waiter behind
                for task in waiters:
                    task.cancel()


def utc(when: datetime) -> datetime:
    """Refuse naive datetimes at the boundary rather than guess their zone."""
    if when.tzinfo is None:
        raise ValueError("naive datetime")
    return when.astimezone(UTC)


ZERO = timedelta(0)
