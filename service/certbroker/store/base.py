"""The store contract: the single source of truth, behind a small interface.

SQLite implements it today; a PostgreSQL backend implements the same protocol
later. Every change of a domain goes through a ``Transaction`` that writes the
new row and its event together; the event id is the global revision.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from certbroker.model import CertificateInfo, Domain, Event, EventType, RetryState, Source
from certbroker.priorities import Candidate

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


@dataclass(frozen=True)
class NewCertificate:
    domain: str
    source: Source
    info: CertificateInfo
    key_sealed: bytes = field(repr=False)


@dataclass(frozen=True)
class PendingOrder:
    """An ACME order in flight; persisted before the CA is contacted."""

    domain: str
    registered_domain: str
    names: tuple[str, ...]
    key_sealed: bytes = field(repr=False)
    started_at: datetime
    order_url: str = ""


@dataclass(frozen=True)
class Change:
    """One domain as a committed transaction left it: ``before`` None is an addition,
    ``after`` None a removal."""

    before: Domain | None
    after: Domain | None


class StoreObserver(Protocol):
    """Told of every committed write transaction (the one choke point every domain
    change passes: use cases, scheduler, operators' tools alike).

    Called under the store's write lock, in commit order, so what it keeps follows
    the store exactly; it must not block (no I/O beyond a log line).
    """

    def committed(self, changes: Sequence[Change], seconds: float) -> None:
        """``changes``: the domains written or removed; ``seconds``: the transaction's
        duration, waiting for the write lock included (what a caller waited)."""
        ...


#: What ``LimitReads.limit_spends_of`` reads per bucket: (bucket, key, since, limit).
SpendQuery = tuple[str, str, datetime, int]


def names_key(names: tuple[str, ...] | list[str]) -> str:
    """The CA counts "the same set of names" regardless of order."""
    return ",".join(sorted(set(names)))


class LimitReads(Protocol):
    """What ``certbroker.limits`` reads: the CA's buckets, as recorded spends and pauses.

    Both the store (read-only reports: the scheduler's budget, the doctor) and a
    transaction (where the ledger counts and spends in one go) answer these.

    A spend is one row (bucket, key, domain, at): ``account_orders`` (key ""),
    ``registered_domain`` (the registered domain), ``name_set`` (``names_key``),
    ``failed_authorizations`` (one name). A pause is (bucket, key, until), with
    bucket ``account`` (key "") for the whole account.
    """

    async def limit_spends(
        self, bucket: str, key: str, since: datetime, limit: int
    ) -> list[datetime]:
        """Times of ``bucket``/``key``'s spends, oldest first: all after ``since``,
        preceded by the newest at or before ``since`` (if any); when more than
        ``limit``, only the newest ``limit``.
        """
        ...

    async def limit_spends_of(self, queries: Sequence[SpendQuery]) -> list[list[datetime]]:
        """``limit_spends(bucket, key, since, limit)`` for each of ``queries``, in order, read
        together: one query, so a reservation costs one round trip for all its buckets
        instead of one per bucket (each a thread hop on SQLite, a network one on PostgreSQL).
        """
        ...

    async def limit_pauses(
        self, keys: Collection[tuple[str, str]], now: datetime
    ) -> dict[tuple[str, str], datetime]:
        """Of the (bucket, key) pairs in ``keys``, those paused beyond ``now``, with until when."""
        ...

    async def names_issued_since(self, names: tuple[str, ...], since: datetime) -> bool:
        """Was a certificate for exactly ``names`` (any order) issued after ``since``?

        The CA's test for a renewal (``record_issuance`` rows, kept when a domain goes).
        """
        ...


class LimitRecords(LimitReads, Protocol):
    """What ``certbroker.limits`` writes, inside the transaction that places the order."""

    async def add_limit_spend(self, bucket: str, key: str, domain: str, at: datetime) -> None:
        """Record one token of ``bucket``/``key`` spent by ``domain``'s order at ``at``."""
        ...

    async def refund_limit_spends(self, domain: str, buckets: Collection[str]) -> int:
        """Delete ``domain``'s spends in ``buckets`` made after its newest issuance
        (``record_issuance``): the reservations of an order that got no certificate.
        Idempotent; returns how many went.
        """
        ...

    async def pause_limit(self, bucket: str, key: str, until: datetime) -> None:
        """Pause ``bucket``/``key`` until ``until`` (a later pause already there stays)."""
        ...

    async def prune_limit_records(self, before: datetime) -> int:
        """Delete spends made, and pauses ended, before ``before``; returns how many."""
        ...


class Transaction(LimitRecords, Protocol):
    async def get_domain(self, name: str) -> Domain | None: ...

    async def put_domain(
        self, domain: Domain, event: EventType = EventType.DOMAIN_UPDATED
    ) -> Domain:
        """Insert or replace the row, append its event; returns it with the new revision."""
        ...

    async def put_schedule(self, domain: Domain) -> Domain:
        """Write only the scheduling columns (next run and attempt, check and error times,
        last forced retry), with no event: for transitions that change nothing a watcher
        is shown (``lifecycle.worth_an_event``). The row keeps its revision.
        """
        ...

    async def delete_domain(self, domain: Domain) -> int:
        """Remove the row, its certificates and order; returns the removal event's revision."""
        ...

    async def keep_backoff(self, name: str, app: str, retry: RetryState, now: datetime) -> None:
        """Keep a removed domain's backoff under its name until ``retry.next_attempt_at``.

        Replaces what the name held; drops what any name held that ran out by ``now``.
        """
        ...

    async def take_backoff(self, name: str, now: datetime) -> tuple[str, RetryState] | None:
        """The app and backoff a removed domain left for ``name``, if its wait runs past
        ``now``; removed from the store either way."""
        ...

    async def add_certificate(self, certificate: NewCertificate) -> CertificateInfo: ...

    async def record_issuance(
        self,
        domain: str,
        registered_domain: str,
        names: tuple[str, ...],
        serial: str,
        at: datetime,
    ) -> None: ...

    async def get_order(self, domain: str) -> PendingOrder | None: ...

    async def put_order(self, order: PendingOrder) -> None: ...

    async def delete_order(self, domain: str) -> None: ...

    async def add_challenge_event(
        self, domain: str, event: EventType, token: str, key_authorization: str, at: datetime
    ) -> int: ...

    async def domains_under(self, base: str, other_than_app: str) -> list[Domain]:
        """Domains of apps other than ``other_than_app`` whose name ends with ``.base``.

        Any depth below ``base``, found by a scan of every row: for the platform
        domains' check at start (``certbroker.platform.reconcile``), never per request.
        """
        ...

    async def family_rows(
        self, names: Sequence[str], covered_by: str | None, other_than_app: str, limit: int
    ) -> list[Domain]:
        """Rows of apps other than ``other_than_app`` that may share a claim's family.

        Those named ``names`` (in that order), then up to ``limit`` of the rows a
        certificate for ``*.covered_by`` would be valid for: ``y.covered_by``, and
        ``*.y.covered_by`` with its apex. ``certbroker.tenancy.neighbours`` says what
        to ask for and ``check_family`` decides. Only indexed lookups (the primary key,
        and migration 010's ``exact_parent``), because it runs holding the write lock.
        """
        ...

    async def ensure_meta(self, key: str, value: bytes) -> bytes:
        """Store ``value`` under ``key`` unless a value is there; return the stored one.

        Two brokers starting at once on one store both get the first writer's value.
        """
        ...

    async def set_meta(self, key: str, value: bytes) -> None: ...

    async def lease_holder(self, name: str, now: datetime) -> str | None:
        """Who holds ``name``'s lease at ``now`` (None: nobody, or it lapsed).

        Read in the writing transaction, so a broker that lost a domain's lease
        (stalled past it while another took over) notices before it writes.
        """
        ...


class Store(LimitReads, Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """One atomic unit of work; commits on normal exit, rolls back on an exception."""
        ...

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """Called with the newest revision after each commit that wrote events."""
        ...

    def observe(self, observer: StoreObserver, tracer: Tracer | None = None) -> None:
        """Tell ``observer`` of every commit of this process from now on; with ``tracer``,
        a write made inside a recorded trace is a ``store.write`` span of it."""
        ...

    async def get_domain(self, name: str) -> Domain | None: ...

    async def list_domains(self, app: str | None, after: str, limit: int) -> list[Domain]:
        """Up to ``limit`` domains named after ``after``, in name order (of ``app`` if given).

        With their certificates, read together (a query for the page's certificates, not
        one per row): the watch snapshot pages through every domain here.
        """
        ...

    async def due_domains(self, now: datetime, limit: int) -> list[Domain]: ...

    async def due_names(
        self, now: datetime, limit: int, exclude: Collection[str] = ()
    ) -> list[str]:
        """Names of due domains, earliest first, leaving out ``exclude`` (being worked)."""
        ...

    async def names_with_last_error(self, reason: str) -> list[str]:
        """Names whose last error reason is ``reason`` (the scheduler re-evaluates the
        NOT_CONFIGURED ones at every start: settings may have changed)."""
        ...

    async def due_candidates(
        self, now: datetime, limit: int, exclude: Collection[str] = (), owner: str = ""
    ) -> list[Candidate]:
        """Due domains (``next_run_at <= now``) not in ``exclude`` and not leased to a
        broker other than ``owner`` (see ``claim_due``), with what
        ``certbroker.priorities`` orders them by, at most ``limit``.

        Kind RENEWAL when the domain has a Let's Encrypt certificate (``expires_at``
        its notAfter), else FIRST; ``needs_token`` for a FIRST with Let's Encrypt on
        that is CREATING or held by a bucket (``last_error_reason`` one of the
        ``certbroker.limits`` hold reasons): ready to order. Which ``limit`` rows: renewals by
        expiry, then FIRSTs without ``needs_token``, then those with it; inside the
        last two, by rank within (app, tier) by due time, so every app's most
        overdue domain is in before any app's second (the round-robin survives the
        cut). Cost: one pass over the due rows.
        """
        ...

    async def next_due_time(
        self, exclude: Collection[str] = (), after: datetime | None = None
    ) -> datetime | None:
        """The earliest ``next_run_at`` among domains not in ``exclude`` (those being
        worked), only counting times later than ``after`` when given (the domains due
        already wait for something else: a token).
        """
        ...

    async def events_after(self, revision: int, limit: int) -> list[Event]: ...

    async def current_revision(self) -> int: ...

    async def compacted_through(self) -> int:
        """Events at or below this revision are gone; resuming from before it is impossible."""
        ...

    async def compact_events(self, before: datetime) -> int: ...

    async def compact_certificates(self, before: datetime, now: datetime) -> int:
        """Delete certificates (row and sealed key) retired before ``before``; returns how many.

        Retired: no longer the domain's Let's Encrypt or custom certificate. A row
        whose retirement is newer than the compacted events stays (a router resuming
        from an older revision would be told to serve it).
        """
        ...

    async def load_key(self, certificate_id: int) -> bytes | None:
        """The sealed private key of a certificate."""
        ...

    async def load_keys(self, certificate_ids: Collection[int]) -> dict[int, bytes]:
        """The sealed private keys of many certificates, by certificate id.

        Ids with no certificate row (deleted meanwhile, or never) are left out of the
        answer, not an error. A fixed number of queries for a snapshot page (the SQLite
        store: ``SELECT id, key_sealed FROM certificates WHERE id IN (...)``, in slices
        of 500 ids), not one per id: a router's snapshot of 100,000 names reads every key.
        """
        ...

    async def get_order(self, domain: str) -> PendingOrder | None: ...

    async def get_meta(self, key: str) -> bytes | None: ...

    # -- claims and leases: several brokers on one store (see claim_due) -----------------

    async def claim_due(
        self, owner: str, names: Sequence[str], now: datetime, lease: timedelta
    ) -> list[str]:
        """Lease to ``owner`` until ``now + lease`` those of ``names`` it may work now; them.

        Claimable: due (``next_run_at <= now``) and no lease held by another broker
        at ``now`` (none, lapsed, or ``owner``'s own). ``names`` are what the
        scheduler chose from ``due_candidates(owner=...)``; one another broker
        claimed or worked meanwhile is left out. Two brokers claiming at once never
        get the same name (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so neither waits
        for the other; SQLite: its single writer). A short transaction of its own
        that writes no event and does not wait for the writers' lock.
        """
        ...

    async def renew_leases(
        self, owner: str, names: Collection[str], now: datetime, lease: timedelta
    ) -> list[str]:
        """Extend ``owner``'s leases on ``names`` to ``now + lease``; the names still held.

        A name missing from the answer was taken over by another broker (this one
        stalled past its lease): stop working it.
        """
        ...

    async def release(self, owner: str, names: Collection[str]) -> None:
        """Give up ``owner``'s leases on ``names`` (others may claim them at once)."""
        ...

    async def next_claim_time(
        self,
        owner: str,
        now: datetime,
        exclude: Collection[str] = (),
        after: datetime | None = None,
    ) -> datetime | None:
        """When ``owner`` may next claim something: the earliest ``next_run_at`` of a domain
        it could lease (later than ``after`` when given, as for ``next_due_time``), or
        the earliest lapse of another broker's lease (which may be that broker dying).
        ``exclude``: what the caller works already."""
        ...

    async def take_lease(self, name: str, owner: str, now: datetime, lease: timedelta) -> bool:
        """Take or extend the named lease (a job that runs once across the cluster, or a
        presence mark) unless another owner holds it at ``now``; True if ``owner`` holds it."""
        ...

    async def drop_lease(self, name: str, owner: str) -> None:
        """Give up the named lease if ``owner`` holds it."""
        ...

    async def lease_owners(self, prefix: str, now: datetime) -> list[str]:
        """Owners of the named leases starting with ``prefix`` that hold at ``now``."""
        ...

    # -- HTTP-01 answers shared by every broker ------------------------------------------

    async def put_challenge(
        self, token: str, key_authorization: str, owner: str, expires: datetime
    ) -> None:
        """Publish an HTTP-01 answer for every broker's responder; returns once committed."""
        ...

    async def remove_challenge(self, token: str, owner: str) -> None:
        """Withdraw ``owner``'s publication of ``token`` (another broker's stays)."""
        ...

    async def get_challenge(self, token: str, now: datetime) -> str | None:
        """The key authorization any broker published for ``token``, unless expired."""
        ...

    async def purge_expired(self, now: datetime) -> int:
        """Delete challenges and named leases that expired before ``now``; how many."""
        ...

    async def close(self) -> None: ...


def in_family_order(rows: Sequence[Domain], names: Sequence[str], limit: int) -> list[Domain]:
    """``rows`` named in ``names`` first, in that order, then at most ``limit`` others.

    For ``family_rows``, whose covered rows come from two ranges of apps. The family
    refusal names the first conflicting row: the apex before its wildcard, as the rule
    is explained, whatever order the database returned them in.
    """
    rank = {name: i for i, name in enumerate(names)}
    ordered = sorted(rows, key=lambda row: rank.get(row.name, len(names)))
    named = sum(row.name in rank for row in ordered)
    return ordered[: named + limit]
