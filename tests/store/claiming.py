"""Claiming as the scheduler does it, for store tests: offered candidates, then leased."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from tests.store.backends import AnyStore

LEASE = timedelta(seconds=30)


async def claim(
    store: AnyStore,
    owner: str,
    now: datetime,
    limit: int = 10,
    exclude: Collection[str] = (),
    lease: timedelta = LEASE,
) -> list[str]:
    """The due candidates ``owner`` is offered (at most ``limit``), leased to it."""
    offered = await store.due_candidates(now, limit, exclude=exclude, owner=owner)
    return await store.claim_due(owner, [c.name for c in offered], now, lease)
