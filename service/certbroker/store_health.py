"""How the scheduler lives with a store that cannot take writes: pace, report, log sparingly.

A full disk or a database locked by another process fails every write the
scheduler tries. Retrying each due domain at once spun (thousands of failed
steps a second, repeated DNS checks, two tracebacks each). Instead:

- ``StoreHealth`` paces the whole scheduler. Failures close together (the
  steps in flight when the disk filled) count as one *round*; after a round
  nothing new starts until ``STORE_RETRY`` has passed (1 s, doubling to 5 min),
  and then one small probe write decides whether to go on. From the third
  failing round on the store counts as unhealthy (gRPC health NOT_SERVING),
  until a write succeeds again.
- ``Holds`` keep a domain whose own step could not be recorded from running
  again before its own ``STORE_RETRY`` delay. They live in memory: the store
  is exactly what cannot hold them, and a restart may as well try again.
- Failures are logged at most once per ``LOG_EVERY``, with a count and without
  a traceback; a recovery is logged once.

Times come from the injected clock, so tests move through the delays with a
fake one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from certbroker.backoff import STORE_RETRY
from certbroker.errors import BrokerError

log = logging.getLogger(__name__)
#: Failing rounds (1 s, 2 s, 4 s apart at first) before the store counts as unhealthy.
UNHEALTHY_AFTER = 3
LOG_EVERY = timedelta(seconds=30)


def describe(error: BaseException) -> str:
    """One line for the log: the stable reason where there is one, never a traceback."""
    if isinstance(error, BrokerError):
        return f"{error.reason}: {error.message}"
    return f"{type(error).__name__}: {error}"


class StoreHealth:
    """Whether the store takes the scheduler's writes, and when to try again if not."""

    def __init__(
        self, *, unhealthy_after: int = UNHEALTHY_AFTER, log_every: timedelta = LOG_EVERY
    ) -> None:
        self._unhealthy_after = unhealthy_after
        self._log_every = log_every
        self._rounds = 0
        self._retry_at: datetime | None = None
        self._since: datetime | None = None
        self._unlogged = 0
        self._logged_at: datetime | None = None

    @property
    def healthy(self) -> bool:
        return self._rounds < self._unhealthy_after

    @property
    def suspect(self) -> bool:
        """A write failed since the last success: probe before working domains again."""
        return self._rounds > 0

    def resume_at(self, now: datetime) -> datetime | None:
        """Start nothing before this time; ``None``: go on (after a probe, if ``suspect``)."""
        if self._retry_at is not None and now < self._retry_at:
            return self._retry_at
        return None

    def failed(self, error: BaseException, now: datetime) -> None:
        self._unlogged += 1
        if self._since is None:
            self._since = now
        if self._retry_at is None or now >= self._retry_at:
            self._rounds += 1
            self._retry_at = now + STORE_RETRY.delay(self._rounds)
        if self._logged_at is None or now - self._logged_at >= self._log_every:
            log.warning(
                "the store cannot record scheduler steps (%s); %d failed since the last report, "
                "failing since %s; next try at %s%s",
                describe(error),
                self._unlogged,
                self._since.isoformat(),
                self._retry_at.isoformat(),
                "" if self.healthy else "; health is NOT_SERVING",
            )
            self._logged_at = now
            self._unlogged = 0

    def succeeded(self, now: datetime) -> None:
        if self._rounds and self._since is not None:
            log.warning("the store takes writes again (failing since %s)", self._since.isoformat())
        self._rounds = 0
        self._retry_at = None
        self._since = None
        self._unlogged = 0


@dataclass
class _Hold:
    failures: int
    until: datetime


class Holds:
    """Domains whose step could not be recorded, each kept back by its own growing delay."""

    def __init__(self) -> None:
        self._holds: dict[str, _Hold] = {}

    def __len__(self) -> int:
        return len(self._holds)

    def hold(self, name: str, now: datetime) -> datetime:
        previous = self._holds.get(name)
        failures = previous.failures + 1 if previous is not None else 1
        until = now + STORE_RETRY.delay(failures)
        self._holds[name] = _Hold(failures, until)
        return until

    def release(self, name: str) -> None:
        self._holds.pop(name, None)

    def held(self, now: datetime) -> set[str]:
        # A hold long expired (its domain recorded nothing since, or was removed) is
        # forgotten, so the map cannot grow without bound; a new failure starts at 1 s.
        stale = now - STORE_RETRY.maximum
        for name in [n for n, hold in self._holds.items() if hold.until < stale]:
            del self._holds[name]
        return {name for name, hold in self._holds.items() if hold.until > now}

    def next_release(self, now: datetime) -> datetime | None:
        return min((h.until for h in self._holds.values() if h.until > now), default=None)
