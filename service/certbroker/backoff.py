"""Retry and renewal timing, the seed's numbers in one place.

Backoff: "1 minute for the first retry, 2 minutes for the second, 4 minutes
for the third and so on ... capped at a minimum of one try per day". The
policy is tenacity's ``wait_exponential``; we only ask it for the wait of the
n-th attempt, because the attempt count lives in the store, not in a loop.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from tenacity import RetryCallState, wait_exponential

FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(days=1)
_POLICY = wait_exponential(
    multiplier=FIRST_RETRY.total_seconds(),
    min=FIRST_RETRY.total_seconds(),
    max=MAX_RETRY.total_seconds(),
)
# Let's Encrypt's recommendation, the seed's "renew every 60 days" of 90.
RENEW_AT_FRACTION = 2 / 3


def retry_delay(attempt: int) -> timedelta:
    """Wait after the ``attempt``-th consecutive failure (1 → 1 min, 2 → 2 min, … ≤ 1 day)."""
    if attempt < 1:
        return timedelta(0)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return timedelta(seconds=float(_POLICY(state)))


def renewal_time(not_before: datetime, not_after: datetime) -> datetime:
    """Two thirds into the certificate's own life: day 60 of 90, day 30 of 45."""
    return not_before + (not_after - not_before) * RENEW_AT_FRACTION
