"""This broker's claims on the domains it works, so several brokers share one store.

The scheduler does not keep "being worked" in memory alone: it claims due
domains in the store (``Store.claim_due``: a lease to this broker until
``now + lease``), renews the leases of what it works every third of the lease,
and releases each when its step ends. A broker that dies stops renewing, its
leases lapse, and the others claim those domains then: within one lease.

The order row stays the idempotency key: a domain taken over mid-order is
resumed from its order URL (downloaded if the CA already issued), never ordered
again, because every broker shares the ACME account (``store.acme_account``)
and the KEK that opens the order's key.

A broker that stalls past its lease (a pause, a partition) may find its domain
taken over. Two guards: the renewal reports the leases lost and the scheduler
cancels those steps; and the writes that matter (placing an order, storing a
certificate) call ``check`` in their transaction, which refuses the write if
this broker no longer holds the lease (``LeaseLost``). One broker per SQLite file
makes all of this cheap bookkeeping there, with the same semantics.

Clocks: a lease is compared with each broker's clock, so brokers' clocks must
agree to well within a lease (NTP does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta

from certbroker.clock import Clock
from certbroker.store.base import Store, Transaction

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """This broker no longer holds the domain's lease: another broker works it now."""

    def __init__(self, name: str, holder: str | None) -> None:
        super().__init__(f"{name} is no longer leased to this broker (held by {holder or 'none'})")
        self.name = name
        self.holder = holder


class Claims:
    """Claim, renew, release and check the leases of one broker (``owner``). No I/O until used."""

    def __init__(self, store: Store, clock: Clock, owner: str, lease: timedelta) -> None:
        self._store = store
        self._clock = clock
        self.owner = owner
        self.lease = lease
        self._renewer: asyncio.Task[None] | None = None

    async def claim(self, names: Sequence[str]) -> list[str]:
        """Lease those of ``names`` (chosen from ``due_candidates``) no other broker has."""
        return await self._store.claim_due(self.owner, names, self._clock.now(), self.lease)

    async def next_time(
        self, exclude: Collection[str], after: datetime | None = None
    ) -> datetime | None:
        """When the next claim may find something (a due time later than ``after`` if
        given, or another broker's lease lapsing)."""
        return await self._store.next_claim_time(self.owner, self._clock.now(), exclude, after)

    async def release(self, name: str) -> None:
        """The step ended and its outcome is recorded: others may have the domain at once."""
        await self._store.release(self.owner, [name])

    async def release_all(self, names: Collection[str]) -> None:
        """On a graceful stop: hand what was in flight to the other brokers now. Best effort."""
        if not names:
            return
        try:
            await self._store.release(self.owner, list(names))
        except Exception as error:
            log.warning("could not release %d leases on stopping: %s", len(names), error)

    async def check(self, tx: Transaction, name: str) -> None:
        """Raise ``LeaseLost`` unless this broker holds ``name``'s lease (in ``tx``, so the
        write that follows is made under a lease that held when it was checked)."""
        holder = await tx.lease_holder(name, self._clock.now())
        if holder != self.owner:
            raise LeaseLost(name, holder)

    def start_renewing(
        self,
        working: Callable[[], Mapping[str, object]],
        lost: Callable[[str], None],
    ) -> None:
        """Every third of the lease, renew the leases of ``working()`` (name → the step
        working it); call ``lost(name)`` for each another broker took over meanwhile."""
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew_loop(working, lost), name="lease-renewal"
        )

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def renew(
        self, working: Callable[[], Mapping[str, object]], lost: Callable[[str], None]
    ) -> None:
        """One round of renewal (what the loop does every third of the lease).

        Only a step that was working before the renewal and still is counts as lost
        (one that ended, released, and started again meanwhile has a new lease).
        """
        before = dict(working())
        if not before:
            return
        now = self._clock.now()
        held = set(await self._store.renew_leases(self.owner, list(before), now, self.lease))
        after = working()
        for name, step in before.items():
            if name not in held and after.get(name) is step:
                log.warning("lost the lease on %s to another broker; stopping its step", name)
                lost(name)

    async def _renew_loop(
        self, working: Callable[[], Mapping[str, object]], lost: Callable[[str], None]
    ) -> None:
        every = self.lease / 3
        while True:
            await self._clock.sleep_until(self._clock.now() + every)
            try:
                await self.renew(working, lost)
            except Exception as error:  # the next round tries again, well inside the lease
                log.warning("renewing leases failed: %s", error)
