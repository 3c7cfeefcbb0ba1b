"""The weekly quotas (``certbroker.quota``) behind the limits ledger's interface.

A stand-in until the limits ledger (``certbroker.limits``: token buckets
mirroring Let's Encrypt, renewals and ARI ``replaces`` exempt where the CA
exempts them) takes over: the scheduler already speaks the ledger's interface
(``reserve`` in the transaction that persists the order, ``order_failed``,
``rate_limited``), so the swap changes an import, not the scheduler.

What this one does is what the broker did before: count issued and in-flight
certificates per registered domain and per exact name set over 7 days.
It counts renewals like new certificates and ignores failures and
``rateLimited`` answers (beyond the domain's own backoff).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from certbroker import quota
from certbroker.store.base import Transaction


@dataclass(frozen=True)
class OrderRequest:
    """One order the scheduler wants to place."""

    domain: str
    app: str
    registered_domain: str
    names: tuple[str, ...]
    renewal: bool  # the same name set as the certificate it replaces
    replaces: str | None  # the ARI id of that certificate, when the CA offers ARI


@dataclass(frozen=True)
class Hold:
    """Why an order must wait, and until when (the next free slot)."""

    reason: str
    message: str
    until: datetime


class QuotaLedger:
    """``LimitsLedger`` over the 7-day windows of ``certbroker.quota``."""

    def __init__(self, per_registered_domain: int, per_name_set: int) -> None:
        self._per_registered_domain = per_registered_domain
        self._per_name_set = per_name_set

    async def reserve(self, tx: Transaction, request: OrderRequest, now: datetime) -> Hold | None:
        """None when the order fits (the caller's order row then counts it), else the hold."""
        since = now - quota.WINDOW
        registered = request.registered_domain
        block = quota.check(
            await tx.registered_domain_usage(registered, since),
            self._per_registered_domain,
            now,
            "QUOTA_REGISTERED_DOMAIN",
            f"registered domain {registered}",
        ) or quota.check(
            await tx.name_set_usage(request.names, since),
            self._per_name_set,
            now,
            "QUOTA_NAME_SET",
            f"the names {', '.join(request.names)}",
        )
        if block is None:
            return None
        return Hold(block.reason, block.message, block.until)

    async def order_failed(
        self, tx: Transaction, request: OrderRequest, failed_authorizations: int, now: datetime
    ) -> None:
        """Nothing to count here: the domain's backoff paces its retries."""

    async def rate_limited(
        self,
        tx: Transaction,
        request: OrderRequest,
        scope: str,
        retry_after: datetime,
        now: datetime,
    ) -> None:
        """Nothing to pause here: the domain waits for the CA's Retry-After on its own."""
