"""Retry and renewal timing, the seed's numbers in one place.

Backoff: "1 minute for the first retry, 2 minutes for the second, 4 minutes
for the third and so on ... capped at a minimum of one try per day". The
policy is tenacity's ``wait_exponential``; we only ask it for the wait of the
n-th attempt, because the attempt count lives elsewhere (the store, or the
scheduler's memory), not in a retry loop.

Two uses share it, with their own numbers:

- ``ORDER_RETRY``: a failed try at a certificate (persisted attempt count);
- ``STORE_RETRY``: a step whose outcome the store could not record (full disk,
  locked database). That wait lives in memory only, since the store is exactly
  what cannot hold it; it is short at first (a lock is usually gone within a
  second) and stops at five minutes so a repaired disk is noticed soon.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tenacity import RetryCallState, wait_exponential


@dataclass(frozen=True)
class Backoff:
    """Waits of ``first``, doubling per consecutive failure, never above ``maximum``."""

    first: timedelta
    maximum: timedelta

    def delay(self, attempt: int) -> timedelta:
        """Wait after the ``attempt``-th consecutive failure (0 or less: no wait)."""
        if attempt < 1:
            return timedelta(0)
        policy = wait_exponential(
            multiplier=self.first.total_seconds(),
            min=self.first.total_seconds(),
            max=self.maximum.total_seconds(),
        )
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return timedelta(seconds=float(policy(state)))


FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(days=1)
ORDER_RETRY = Backoff(FIRST_RETRY, MAX_RETRY)
STORE_RETRY = Backoff(timedelta(seconds=1), timedelta(minutes=5))
# Let's Encrypt's recommendation, the seed's "renew every 60 days" of 90.
RENEW_AT_FRACTION = 2 / 3


def retry_delay(attempt: int) -> timedelta:
    """Wait after the ``attempt``-th consecutive failure (1 → 1 min, 2 → 2 min, … ≤ 1 day)."""
    return ORDER_RETRY.delay(attempt)


def renewal_time(not_before: datetime, not_after: datetime) -> datetime:
    """Two thirds into the certificate's own life: day 60 of 90, day 30 of 45."""
    return not_before + (not_after - not_before) * RENEW_AT_FRACTION
