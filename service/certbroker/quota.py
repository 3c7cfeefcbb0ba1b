"""The CA's quotas, counted from our own store before an order is placed.

Let's Encrypt: 50 new certificates per registered domain per rolling 7 days
(the seed: "www.example.com, app.example.com and example.com counts for 3"),
and 5 per exact set of names per 7 days. Running into the CA's limit costs
failed requests and, worse, a week; counting locally costs a query.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from certbroker.store.base import QuotaUsage

WINDOW = timedelta(days=7)
# When the slot is held by an order still in flight, look again soon: it may fail.
IN_FLIGHT_RECHECK = timedelta(minutes=1)


@dataclass(frozen=True)
class QuotaBlock:
    reason: str
    message: str
    until: datetime


def check(
    usage: QuotaUsage, limit: int, now: datetime, reason: str, what: str
) -> QuotaBlock | None:
    """None when another certificate fits in the window; else when the next slot frees."""
    if usage.count < limit:
        return None
    until = usage.oldest + WINDOW if usage.oldest is not None else now + IN_FLIGHT_RECHECK
    if until <= now:
        until = now + IN_FLIGHT_RECHECK
    return QuotaBlock(
        reason=reason,
        message=(
            f"{usage.count} certificates for {what} in the last 7 days (limit {limit}); "
            f"next slot frees at {until.isoformat(timespec='seconds')}"
        ),
        until=until,
    )
