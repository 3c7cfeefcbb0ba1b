"""The outbox rule in one place: an event for what watchers are shown, the schedule for the rest.

Every change a router or status page acts on is written with its event in the
same transaction (the event id is the revision). A transition that only moves
scheduling times (a DNS re-check finding what the last one found, a forced
retry, a daily delegation check) is written to the row's scheduling columns
alone: 10,000 domains that never point at the platform would otherwise send
~170 events a second to every router, forever.
"""

from __future__ import annotations

from dataclasses import replace

from certbroker import lifecycle
from certbroker.model import Domain
from certbroker.store.base import Transaction


async def save(tx: Transaction, before: Domain, after: Domain) -> Domain:
    """Write ``after`` over ``before`` (read in ``tx``): nothing, the schedule, or row + event."""
    if not lifecycle.changed(before, after):
        return before
    if lifecycle.worth_an_event(before, after):
        return await tx.put_domain(after)
    # ``updated_at`` and the revision say when watchers last heard of a change: they stay.
    return await tx.put_schedule(
        replace(after, updated_at=before.updated_at, revision=before.revision)
    )
