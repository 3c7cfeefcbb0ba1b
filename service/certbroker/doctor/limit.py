"""Admission for doctor runs: one per domain per interval, and a few at a time overall.

A doctor run sends DNS queries and HTTP requests to wherever a name points,
so an API caller must not be able to turn the broker into a traffic
generator: the same name is checked at most once per ``interval`` and at
most ``max_running`` runs are in flight. Refusals are ``ResourceExhausted``
with the delay that would succeed (``RetryInfo``). The memory of past runs
is bounded: entries older than the interval are dropped as new ones come,
and past ``max_remembered`` names every run is refused until some age out.

In memory only, and that is on purpose: it guards outbound traffic of this
process, it holds no domain state, and a restart forgetting it costs one
extra run per name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from certbroker.errors import ResourceExhausted

#: Names remembered at most, which also caps the runs per interval overall: cycling
#: through fresh names gets no more than 1,000 runs in 10 s.
MAX_REMEMBERED = 1_000
_BUSY_RETRY = timedelta(seconds=1)


class DoctorLimit:
    def __init__(
        self, interval: timedelta, max_running: int = 4, max_remembered: int = MAX_REMEMBERED
    ) -> None:
        if max_running < 1 or max_remembered < 1:
            raise ValueError("max_running and max_remembered must be at least 1")
        self._interval = interval
        self._max_running = max_running
        self._max_remembered = max_remembered
        self._last: OrderedDict[str, datetime] = OrderedDict()  # oldest run first
        self.running = 0

    @contextmanager
    def admit(self, name: str, now: datetime) -> Iterator[None]:
        """Hold a slot for a run on ``name`` (raise ``ResourceExhausted`` if none is free)."""
        self._forget(now)
        last = self._last.get(name)
        if last is not None and now - last < self._interval:
            wait = self._interval - (now - last)
            raise ResourceExhausted(
                f"{name} was checked {(now - last).total_seconds():.0f} s ago; the doctor runs "
                f"at most once per domain every {self._interval.total_seconds():g} s",
                retry_after=wait,
                reason="DOCTOR_RATE_LIMITED",
            )
        if self.running >= self._max_running or len(self._last) >= self._max_remembered:
            raise ResourceExhausted(
                "the doctor is busy with other domains; try again in a moment",
                retry_after=_BUSY_RETRY,
                reason="DOCTOR_BUSY",
            )
        self._last[name] = now
        self._last.move_to_end(name)
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1

    def _forget(self, now: datetime) -> None:
        horizon = now - self._interval
        while self._last:
            name, when = next(iter(self._last.items()))
            if when > horizon:
                break
            del self._last[name]
