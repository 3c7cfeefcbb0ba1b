"""Whether the CA can be talked to: one shared verdict, not each domain's failure.

A CA that is down (network errors, timeouts, 5xx, ``serverInternal``) fails
every order alike. Counting that against each domain's attempt pushed every
domain that tried during a long outage toward one try a day, so they sat idle
for hours after the CA came back. Instead the first such failure marks the CA
*unavailable* for everyone: the scheduler stops starting orders, holds the
domains that want one (reason ``CA_UNAVAILABLE``, state unchanged, attempt
unchanged) and probes the CA's directory on its own capped backoff (5 s
doubling to 5 min, ``PROBE_BACKOFF``). When a probe answers, the held domains
become due at once.

The probe backoff is reset only by a real success (an issued certificate),
not by a probe: a CA whose directory answers but whose orders keep failing
with 5xx is therefore re-tried at a growing interval, never in a tight loop.

Pure bookkeeping on the injected clock; the scheduler does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from certbroker.acme.problems import AcmeProblem
from certbroker.backoff import Backoff

__all__ = ["CA_UNAVAILABLE", "PROBE_BACKOFF", "CaHealth", "Outage"]

#: The reason held domains show while the CA is unavailable.
CA_UNAVAILABLE: Final = "CA_UNAVAILABLE"
PROBE_BACKOFF: Final = Backoff(timedelta(seconds=5), timedelta(minutes=5))


@dataclass(frozen=True)
class Outage:
    """Why the CA is considered unavailable, since when, and when it is probed next."""

    reason: str
    detail: str
    since: datetime
    next_probe: datetime


class CaHealth:
    """The CA's availability as the scheduler sees it."""

    def __init__(self, backoff: Backoff = PROBE_BACKOFF) -> None:
        self._backoff = backoff
        self._outage: Outage | None = None
        self._failures = 0  # consecutive outages (probes included) since the last success
        self.paused_seconds = 0.0  # total time spent unavailable (for metrics)
        self.outages = 0

    @staticmethod
    def is_outage(problem: AcmeProblem) -> bool:
        return problem.ca_unavailable

    @property
    def available(self) -> bool:
        return self._outage is None

    @property
    def outage(self) -> Outage | None:
        return self._outage

    def failed(self, problem: AcmeProblem, now: datetime) -> Outage:
        """A request failed for CA-wide reasons: unavailable until a probe answers.

        While already unavailable this changes nothing (the probe schedule stands):
        concurrent orders failing together count as one outage.
        """
        if self._outage is not None:
            return self._outage
        self._failures += 1
        self.outages += 1
        self._outage = Outage(
            problem.reason,
            problem.detail,
            now,
            now + self._backoff.delay(self._failures),
        )
        return self._outage

    def probe_failed(self, problem: AcmeProblem, now: datetime) -> Outage:
        """The probe did not answer either: wait longer (5 s doubling to 5 min)."""
        self._failures += 1
        since = self._outage.since if self._outage is not None else now
        self._outage = Outage(
            problem.reason, problem.detail, since, now + self._backoff.delay(self._failures)
        )
        return self._outage

    def probe_succeeded(self, now: datetime) -> None:
        """The CA answers again: available. The backoff stays until a real success."""
        if self._outage is not None:
            self.paused_seconds += max(0.0, (now - self._outage.since).total_seconds())
        self._outage = None

    def succeeded(self) -> None:
        """An order went through: the CA is fine, the next outage starts at 5 s again."""
        self._failures = 0

    def paused(self, now: datetime) -> float:
        """Seconds spent unavailable so far, the current outage included."""
        current = 0.0
        if self._outage is not None:
            current = max(0.0, (now - self._outage.since).total_seconds())
        return self.paused_seconds + current
