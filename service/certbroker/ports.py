"""The scheduler's collaborators, as small protocols with written contracts.

Each method says what it raises, whether calling it twice is harmless
(idempotent) and whether the task awaiting it may be cancelled (shutdown
cancels the scheduler's steps). The real implementations live below this
module (``acme``, ``dns``, ``x509.sealing``, ``store``); in-memory fakes in
``tests/fakes`` make the whole lifecycle testable under a fake clock. Nothing
here imports ``app`` or ``scheduler``: lower layers depend on these, never on
the use cases.

The store (``store.base.Store`` and its ``Transaction``, re-exported here) is
the fifth: every method may raise ``errors.StoreUnavailable`` (locked, full,
I/O error); a transaction commits on normal exit and rolls back on any
exception, including cancellation, so a cancelled step leaves no half-write;
reads are idempotent, writes are not (the caller re-reads in the transaction).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from certbroker.dns import CaaResult, DnsResult, PlatformTargets
from certbroker.store.base import Store, Transaction

__all__ = [
    "Dns01Access",
    "DnsChecks",
    "Issued",
    "Issuer",
    "RenewalWindow",
    "Sealer",
    "Store",
    "Transaction",
]


class Sealer(Protocol):
    """Encrypts private keys at rest (``x509.sealing.KeySealer``); pure CPU, no I/O.

    ``aad`` binds a blob to its domain: opening it under another name fails.
    ``open`` raises ``KekError`` for a blob sealed with another key or AAD.
    Both are deterministic in effect and safe anywhere (no awaits).
    """

    def seal(self, plaintext: bytes, aad: str) -> bytes: ...

    def open(self, blob: bytes, aad: str) -> bytes: ...


class Issued(Protocol):
    """A certificate the CA issued: the PEM chain, leaf first."""

    @property
    def chain_pem(self) -> str: ...


@dataclass(frozen=True)
class RenewalWindow:
    """The CA's suggested renewal window (RFC 9773) and when to ask again."""

    start: datetime
    end: datetime
    retry_after: timedelta
    explanation_url: str = ""


class Issuer(Protocol):
    """The ACME CA (``acme.issuer.AcmeIssuer``). Every failure is ``AcmeProblem``.

    ``AcmeProblem.retryable`` says whether the same request may succeed later
    without anybody changing anything; ``retry_after`` carries the CA's
    ``Retry-After``; ``failed_authorizations`` how many authorizations the
    failed order lost.
    """

    async def start(self) -> None:
        """Find or create the ACME account. Idempotent; safe to cancel (a later call
        starts over). Raises ``AcmeProblem`` (the CA is unreachable or refuses)."""
        ...

    async def probe(self) -> None:
        """Is the CA there? One unsigned GET of its directory. Idempotent, safe to cancel;
        raises ``AcmeProblem`` (``ca_unavailable`` when it is down)."""
        ...

    async def account_status(self) -> str:
        """The account as the CA reports it: one POST-as-GET of its URL (RFC 8555
        §7.3.2), ``"valid"``, ``"deactivated"`` or ``"revoked"`` (§7.1.6); ``"deactivated"``
        also when the CA refuses the look-up itself (``unauthorized``: a deactivated
        account may sign nothing, §7.3.6), ``"gone"`` when it does not know the account
        (``accountDoesNotExist``). Idempotent, safe to cancel. Raises ``AcmeProblem``
        when the CA cannot tell (unavailable, anything else)."""
        ...

    async def recover_account(self, *, new_key: bool) -> None:
        """The CA forgot the account (``new_key`` False: find the stored key's account with
        ``onlyReturnExisting``, else register that key again) or deactivated it (``new_key``
        True: register a new key). The new account URL (and key) is stored and every later
        request signs with it. Not idempotent at the CA (may register): the caller rations
        it. Raises ``AcmeProblem``."""
        ...

    @property
    def offers_ari(self) -> bool:
        """The CA publishes renewal information (known once ``start`` succeeded)."""
        ...

    async def issue(
        self,
        names: list[str],
        key_pem: bytes,
        *,
        dns01: bool = False,
        dns01_label: str = "",
        replaces: str = "",
        resume_url: str = "",
        on_order_created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Issued:
        """A certificate for ``names`` with ``key_pem``.

        Not idempotent at the CA: each call may place an order, which is why the
        caller persists the order URL (``on_order_created``, awaited before any
        challenge is answered) and passes it back as ``resume_url`` after a crash:
        that order is continued if the CA can still complete it, otherwise a new
        one is placed. ``replaces`` is the ARI id of the certificate being renewed.
        Safe to cancel: published challenge answers are removed on the way out.
        """
        ...

    async def renewal_info(self, chain_pem: str) -> RenewalWindow | None:
        """The CA's suggested window for the chain's leaf; None when the CA has no ARI.

        Idempotent (an unsigned GET), safe to cancel; raises ``AcmeProblem``.
        """
        ...


class DnsChecks(Protocol):
    """What DNS says (``dns.DnsChecker``). Idempotent, safe to cancel, no caching.

    DNS failures are never mistaken for answers: ``points_to_platform`` and
    ``caa_allows`` report them in their result's reason (DNS_TIMEOUT,
    DNS_SERVFAIL, CAA_ERROR); ``cname_target`` raises ``dns.DnsLookupError``.
    """

    async def points_to_platform(self, name: str, targets: PlatformTargets) -> DnsResult: ...

    async def caa_allows(self, name: str, ca_identity: str, *, wildcard: bool) -> CaaResult: ...

    async def cname_target(self, name: str) -> str | None: ...


class Dns01Access(Protocol):
    """The broker's side of DNS-01 (``acme.dns01.Dns01Updater``)."""

    @property
    def zone(self) -> str: ...

    async def check_access(self, label: str) -> None:
        """Raise ``AcmeProblem`` if the key may not update delegation ``label``'s record.

        Changes nothing in the zone (deletes a value that does not exist), so it
        is idempotent and safe to cancel.
        """
        ...
