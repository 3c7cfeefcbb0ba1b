"""How long to wait before polling an authorization or an order again.

A fixed short interval is right for a CA that answers in milliseconds (Pebble
with ``PEBBLE_VA_NOSLEEP``) and wrong for Let's Encrypt, whose validations and
finalizations take seconds: 50 ms polls would cost it dozens of requests per
authorization. So the waits start at ``first`` (a fast CA's answer is not kept
waiting) and double per poll of the same resource up to ``cap`` (then no more
often than certbot's once a second). A ``Retry-After`` from the server is a
floor: it is honoured when longer than our own wait, up to ``max_retry_after``
(the order's deadline bounds the whole wait anyway, and a stuck poll should
surface as a timeout rather than a sleep of hours).

The doubling is the same ``Backoff`` the scheduler and the transport use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

from certbroker.backoff import Backoff

#: A ``Retry-After`` longer than this on a *poll* is capped.
MAX_POLL_WAIT: Final = 10.0


@dataclass(frozen=True)
class PollSchedule:
    """Waits before the 1st, 2nd, ... poll of one resource: ``first`` doubling to ``cap``."""

    first: float = 0.05
    cap: float = 1.0
    max_retry_after: float = MAX_POLL_WAIT
    _backoff: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"poll waits need 0 < first <= cap (got {self.first}, {self.cap})")
        backoff = Backoff(timedelta(seconds=self.first), timedelta(seconds=self.cap))
        object.__setattr__(self, "_backoff", backoff)

    def delay(self, poll: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the ``poll``-th poll (1-based) of the same resource.

        ``retry_after`` (the server's, from the previous answer) wins when longer.
        """
        ours = self._backoff.delay(max(1, poll)).total_seconds()
        if retry_after is None or retry_after <= ours:
            return ours
        return min(retry_after, max(ours, self.max_retry_after))
