"""The CA's rate limits, mirrored locally as token buckets counted from the store.

Let's Encrypt (2026) limits new orders and certificates with token buckets,
each checked per request; exceeding one is answered ``rateLimited`` with a
``Retry-After``. Running into them costs refused requests that each back off
on their own, so the broker keeps the same buckets and asks the CA only when
the CA would say yes. Defaults are Let's Encrypt's (``Limits``), each
configurable (``CERTBROKER_QUOTA_*``):

=====================  ==================  =============  ==========================
bucket                 capacity / period   refill         charged by
=====================  ==================  =============  ==========================
new orders (account)   300 / 3 h           1 per 36 s     every new order
registered domain      50 / 7 d            1 per 202 min  new certificates only
exact set of names     5 / 7 d             1 per 34 h     every certificate
failed authorizations  5 / 1 h, per name   1 per 12 min   every failed validation
=====================  ==================  =============  ==========================

Exemptions, as at the CA: a *renewal* (a certificate for exactly the same
set of names was issued before, within ``RENEWAL_LOOKBACK``) is exempt from the
new-orders and registered-domain buckets; an ARI renewal (``replaces``) is
exempt from all of them. The CA decides what a renewal is from its records,
not from what the client says, so the ledger does too: from the store's
issuances (``OrderRequest.renewal`` is the scheduler's own view and only
orders the queue, ``certbroker.priorities``).

The maths (``replay``) is GCRA, the "generic cell rate algorithm" Let's
Encrypt's Boulder uses for these limits: a bucket of ``capacity`` tokens
refilled one per ``interval = period / capacity`` is the same thing as a
*theoretical arrival time* (TAT) that each spend pushes ``interval`` later; a
request is allowed while ``max(TAT, now) + interval - now <= period``. With
capacity 300 and period 3 h that is LE's "300 per 3 hours, refill 1 per 36
seconds" exactly (50/7 d refills every 201.6 min, LE's "202"; 5/7 d every
33.6 h, LE's "34"). The state is one timestamp, so it is rebuilt from the
spends the store recorded, never kept in memory: a restart or a crash loses
nothing, and changing a limit re-reads the same history with new numbers.

Rebuilding from the last ``period`` only is exact whenever the bucket was full
at some spend, and otherwise errs on the safe side, by a construction that
needs no older history: right after any admitted spend ``t`` the TAT is at
most ``t + period`` (the CA admits nothing that would push it further), so the
replay starts from the newest spend at or before ``now - period`` as an empty
bucket and clamps each step to ``t + period``. Every value it computes is at
least the CA's TAT, i.e. the ledger never believes in a token the CA does not
have (as long as this account is the only one spending the bucket: other
accounts' certificates for the same registered domain are invisible here).

Certificate buckets are charged when an order is reserved (before the CA is
contacted, so concurrent orders cannot overshoot) and refunded if the order
fails without a certificate (``order_failed``); the CA only spends them at
issuance. The new-orders token stays spent either way, as at the CA.

Several brokers on one store spend the same buckets. ``reserve`` and ``reorder``
read a bucket and record the spend in one store transaction, and the store runs
write transactions one at a time across every broker (SQLite: one serving
process per file, its single writer; PostgreSQL: the revision-counter lock taken
at BEGIN, READ COMMITTED so every read after it sees every earlier spend), so two
brokers can never both take the last token (tests/store/test_postgres_ledger.py).
What is read outside a transaction (``budget``, ``outlook``) only decides what to
try: the spend is checked again where it is made.

Every new-order request is counted once: the reservation covers the order row's
first; a replacement (the CA forgot the order or the account) and a row without
an order URL that is resumed (the request that created the row may have reached
the CA before its URL was saved: a crash, a lease lost, a failed write) are
reserved again (``reorder``); a resumed order the CA can no longer complete,
replaced inside the issuer, is counted as its URL is saved (``placed``). A row
whose request never reached the CA (a crash before it, the CA unreachable) is
therefore counted once more when resumed: an order the CA never saw, the safe
side.

A ``rateLimited`` answer means our mirror and the CA disagree (another
account, changed limits, a lost record): ``rate_limited`` pauses the bucket the
CA named, for every domain that bucket covers, until its ``Retry-After``; an
account-wide answer pauses everything but ARI renewals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from certbroker.store.base import LimitReads, LimitRecords, names_key

log = logging.getLogger(__name__)

# Bucket names as stored (``limit_spends.bucket``, ``limit_pauses.bucket``).
ACCOUNT_ORDERS: Final = "account_orders"
REGISTERED_DOMAIN: Final = "registered_domain"
NAME_SET: Final = "name_set"
FAILED_AUTHORIZATIONS: Final = "failed_authorizations"
ACCOUNT: Final = "account"  # pauses only: the whole account

# Hold reasons (``RetryState.last_error_reason`` of a held domain).
QUOTA_ACCOUNT_ORDERS: Final = "QUOTA_ACCOUNT_ORDERS"
QUOTA_REGISTERED_DOMAIN: Final = "QUOTA_REGISTERED_DOMAIN"
QUOTA_NAME_SET: Final = "QUOTA_NAME_SET"
QUOTA_FAILED_AUTHORIZATIONS: Final = "QUOTA_FAILED_AUTHORIZATIONS"
CA_RATE_LIMITED: Final = "CA_RATE_LIMITED"

#: ``rate_limited``'s scopes (``certbroker.acme.problems.rate_limit_scope``) -> buckets.
_SCOPE_BUCKET: Final[dict[str, str]] = {
    "account": ACCOUNT,
    "orders": ACCOUNT_ORDERS,
    "registered_domain": REGISTERED_DOMAIN,
    "name_set": NAME_SET,
    "failed_authorizations": FAILED_AUTHORIZATIONS,
}
_REASONS: Final[dict[str, str]] = {
    ACCOUNT_ORDERS: QUOTA_ACCOUNT_ORDERS,
    REGISTERED_DOMAIN: QUOTA_REGISTERED_DOMAIN,
    NAME_SET: QUOTA_NAME_SET,
    FAILED_AUTHORIZATIONS: QUOTA_FAILED_AUTHORIZATIONS,
}
#: How far back an issuance of the same names makes an order a renewal. The CA's own
#: look-back is not published; 90 days (the longest certificate it issues) errs safe.
RENEWAL_LOOKBACK: Final = timedelta(days=90)
#: Spends and pauses older than this are deleted by the compactor; configured periods
#: are capped below it (``MAX_PERIOD``) so no bucket ever needs a deleted row.
RECORDS_KEPT: Final = timedelta(days=35)
MAX_PERIOD: Final = timedelta(days=30)


# --- the buckets and their maths (pure) -----------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """``capacity`` tokens, refilled one per ``period / capacity``, starting full."""

    capacity: int
    period: timedelta

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.period <= timedelta(0):
            raise ValueError(f"a bucket needs capacity >= 1 and a period > 0, not {self}")

    @property
    def interval(self) -> timedelta:
        """Time to refill one token (LE's "refill 1 per ...")."""
        return self.period / self.capacity

    def describe(self) -> str:
        return f"{self.capacity} per {_human(self.period)} (1 more every {_human(self.interval)})"


def _human(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{seconds:g} s"


@dataclass(frozen=True)
class BucketState:
    """A bucket at one moment: its theoretical arrival time (``None``: full)."""

    bucket: Bucket
    tat: datetime | None

    def tokens(self, now: datetime) -> int:
        """Whole tokens available at ``now`` (0 … capacity)."""
        if self.tat is None or self.tat <= now:
            return self.bucket.capacity
        room = now + self.bucket.period - self.tat
        return max(0, min(self.bucket.capacity, int(room / self.bucket.interval)))

    def next_token_at(self, now: datetime) -> datetime | None:
        """``None`` when a request fits at ``now``, else the moment one does."""
        if self.tat is None:
            return None
        at = self.tat + self.bucket.interval - self.bucket.period
        return at if at > now else None

    def spend(self, at: datetime) -> BucketState:
        """The state after one token is taken at ``at`` (whether or not one was there)."""
        base = at if self.tat is None or self.tat < at else self.tat
        return BucketState(self.bucket, min(base + self.bucket.interval, at + self.bucket.period))


def replay(bucket: Bucket, spends: Sequence[datetime], *, complete: bool) -> BucketState:
    """Rebuild a bucket from its recorded spends, oldest first (GCRA, see the module doc).

    ``complete``: ``spends`` is the whole history that matters (nothing was spent
    within ``period`` before the first of them), so the bucket was full before it.
    Otherwise the first spend is taken to have emptied the bucket — the most it
    can have done — which never overstates what is left.
    """
    interval, period = bucket.interval, bucket.period
    tat: datetime | None = None
    rest = spends
    if spends and not complete:
        tat, rest = spends[0] + period, spends[1:]
    for at in rest:  # BucketState.spend, unrolled: hundreds of spends per check
        step = (at if tat is None or tat < at else tat) + interval
        ceiling = at + period
        tat = step if step < ceiling else ceiling
    return BucketState(bucket, tat)


@dataclass(frozen=True)
class Limits:
    """The four buckets (Let's Encrypt's 2026 values by default)."""

    account_orders: Bucket = Bucket(300, timedelta(hours=3))
    registered_domain: Bucket = Bucket(50, timedelta(days=7))
    name_set: Bucket = Bucket(5, timedelta(days=7))
    failed_authorizations: Bucket = Bucket(5, timedelta(hours=1))

    def of(self, bucket: str) -> Bucket:
        return {
            ACCOUNT_ORDERS: self.account_orders,
            REGISTERED_DOMAIN: self.registered_domain,
            NAME_SET: self.name_set,
            FAILED_AUTHORIZATIONS: self.failed_authorizations,
        }[bucket]


# --- the ledger ---------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRequest:
    """What an order would ask the CA for, as far as its limits care."""

    domain: str
    app: str
    registered_domain: str
    names: tuple[str, ...]
    renewal: bool
    replaces: str | None  # ARI: id of the replaced certificate → exempt from everything


@dataclass(frozen=True)
class Hold:
    """Why an order must wait and until when (the next token, or the end of a pause)."""

    reason: str
    message: str
    until: datetime


@dataclass(frozen=True)
class Headroom:
    """One bucket an order would be charged to, as it stands (for reports)."""

    bucket: str
    what: str
    tokens: int
    limit: Bucket


@dataclass(frozen=True)
class Outlook:
    """What ``reserve`` would answer now, without spending: the hold, and each bucket."""

    hold: Hold | None
    renewal: bool
    buckets: tuple[Headroom, ...]


@dataclass(frozen=True)
class Budget:
    """How many non-renewal orders the account may start now; if none, when the next may.

    ``wait``: what a first certificate waiting for one of these tokens is told (the
    pause or the used-up bucket, until ``next_at``; ``None`` while tokens are left).
    """

    tokens: int
    next_at: datetime | None
    wait: Hold | None = None


class LimitsLedger:
    """Counts, records and refunds orders against ``Limits``; the only reader and writer
    of the store's limit records (``limit_spends``, ``limit_pauses``).

    ``tx`` is the store's ``Transaction`` (any ``LimitRecords``): the spends are
    written with the order row, so an order exists exactly when its tokens are spent.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    async def reserve(self, tx: LimitRecords, request: OrderRequest, now: datetime) -> Hold | None:
        """Count the order against every bucket it is charged to and, if all have a token,
        record the spends in ``tx`` (with the order, in the caller's transaction);
        otherwise record nothing and say what holds it, until the latest of the
        blocking buckets has a token (nothing can go before that).
        """
        outlook = await self.outlook(tx, request, now)
        if outlook.hold is not None:
            return outlook.hold
        if request.replaces:
            return None
        for bucket, key in self._charged(request, outlook.renewal):
            await tx.add_limit_spend(bucket, key, request.domain, now)
        return None

    async def reorder(self, tx: LimitRecords, request: OrderRequest, now: datetime) -> Hold | None:
        """A reserved order is placed again (the CA forgot the order, or the account it was
        bound to): charge what a second new-order request costs at the CA, or say what
        holds it.

        The CA counts every new-order request on the account's new-orders bucket
        (renewals and ARI renewals exempt, as in ``reserve``), so the replacement
        spends a token of its own. The certificate buckets (registered domain, name
        set) are not charged again: the CA spends them only at issuance, and the
        order row's reservation, still open (not refunded), covers the one
        certificate this row can yield. Failed authorizations and pauses are checked
        as for any order; the certificate buckets' own tokens are not (our open
        reservation is one of them: the CA has not spent it yet).
        """
        if request.replaces:
            return None
        renewal = await tx.names_issued_since(request.names, now - RENEWAL_LOOKBACK)
        charged = self._charged(request, renewal)
        failed = [(FAILED_AUTHORIZATIONS, n) for n in request.names]
        pauses = await tx.limit_pauses([(ACCOUNT, ""), *charged, *failed], now)
        holds = [self._paused(bucket, key, until) for (bucket, key), until in pauses.items()]
        counted = failed if renewal else [(ACCOUNT_ORDERS, ""), *failed]
        states = await self._states(tx, counted, now)
        for (bucket, key), state in zip(counted, states, strict=True):
            at = state.next_token_at(now)
            if at is not None:
                holds.append(self._exhausted(bucket, key, at))
        if holds:
            return max(holds, key=lambda h: h.until)
        if not renewal:
            await tx.add_limit_spend(ACCOUNT_ORDERS, "", request.domain, now)
        return None

    async def placed(self, tx: LimitRecords, request: OrderRequest, now: datetime) -> None:
        """A new order the CA admitted without a reservation covering it (the issuer
        replaced a resumed order the CA could no longer complete: invalid, expired,
        unknown): count it as the CA did, on the account's new-orders bucket (renewals
        and ARI renewals exempt). After the fact, so not checked: the CA said yes.
        """
        if request.replaces:
            return
        if not await tx.names_issued_since(request.names, now - RENEWAL_LOOKBACK):
            await tx.add_limit_spend(ACCOUNT_ORDERS, "", request.domain, now)

    async def outlook(self, reads: LimitReads, request: OrderRequest, now: datetime) -> Outlook:
        """What ``reserve`` would answer at ``now``, read-only (the doctor's report)."""
        if request.replaces:
            return Outlook(None, True, ())  # ARI renewal: exempt from every limit
        renewal = await reads.names_issued_since(request.names, now - RENEWAL_LOOKBACK)
        charged = self._charged(request, renewal)
        checked = [*charged, *((FAILED_AUTHORIZATIONS, n) for n in request.names)]
        holds: list[Hold] = []
        pauses = await reads.limit_pauses([(ACCOUNT, ""), *checked], now)
        for (bucket, key), until in pauses.items():
            holds.append(self._paused(bucket, key, until))
        buckets = []
        states = await self._states(reads, checked, now)
        for (bucket, key), state in zip(checked, states, strict=True):
            at = state.next_token_at(now)
            if at is not None:
                holds.append(self._exhausted(bucket, key, at))
            limit = self.limits.of(bucket)
            buckets.append(Headroom(bucket, _what(bucket, key), state.tokens(now), limit))
        hold = max(holds, key=lambda h: h.until) if holds else None
        return Outlook(hold, renewal, tuple(buckets))

    async def order_failed(
        self,
        tx: LimitRecords,
        request: OrderRequest,
        failed_authorizations: int,
        now: datetime,
        *,
        identifier: str = "",
    ) -> None:
        """The order ended without a certificate: refund its certificate buckets and charge
        the failed validations: one to ``identifier`` when the CA named it (an order
        has one authorization per name), else one to every name of the order (the
        CA counts per name and we cannot tell which failed).

        Idempotent for the refund (only spends newer than the domain's last issuance
        are certificate reservations still open).
        """
        await tx.refund_limit_spends(request.domain, (REGISTERED_DOMAIN, NAME_SET))
        if failed_authorizations <= 0:
            return
        for name in (identifier,) if identifier else request.names:
            await tx.add_limit_spend(FAILED_AUTHORIZATIONS, name, request.domain, now)

    async def rate_limited(
        self,
        tx: LimitRecords,
        request: OrderRequest,
        scope: str,
        retry_after: datetime,
        now: datetime,
    ) -> None:
        """The CA refused with ``rateLimited``: pause what it named until ``retry_after``.

        The pause covers every domain the bucket covers (the registered domain,
        the name set, each name, or the whole account), not only ``request``'s.
        The order got no certificate, so its reservations are refunded too.
        """
        bucket = _SCOPE_BUCKET.get(scope)
        if bucket is None:
            log.warning("unknown rate-limit scope %r: pausing the whole account", scope)
            bucket = ACCOUNT
        until = max(retry_after, now)
        keys = {
            ACCOUNT: [""],
            ACCOUNT_ORDERS: [""],
            REGISTERED_DOMAIN: [request.registered_domain],
            NAME_SET: [names_key(request.names)],
            FAILED_AUTHORIZATIONS: list(request.names),
        }[bucket]
        for key in keys:
            await tx.pause_limit(bucket, key, until)
        await tx.refund_limit_spends(request.domain, (REGISTERED_DOMAIN, NAME_SET))
        log.warning("the CA rate-limited %s (%s); paused until %s", request.domain, bucket, until)

    async def budget(self, reads: LimitReads, now: datetime) -> Budget:
        """New (non-renewal) orders the account may place now: the scheduler claims at
        most this many first certificates, so the rest wait without being worked."""
        pauses = await reads.limit_pauses([(ACCOUNT, ""), (ACCOUNT_ORDERS, "")], now)
        if pauses:
            (bucket, key), until = max(pauses.items(), key=lambda p: p[1])
            return Budget(0, until, self._paused(bucket, key, until))
        state = await self._state(reads, ACCOUNT_ORDERS, "", now)
        tokens = state.tokens(now)
        if tokens:
            return Budget(tokens, None)
        at = state.next_token_at(now) or now  # no token, so one is to come
        return Budget(0, at, self._exhausted(ACCOUNT_ORDERS, "", at))

    def _charged(self, request: OrderRequest, renewal: bool) -> list[tuple[str, str]]:
        charged = [(NAME_SET, names_key(request.names))]
        if not renewal:
            charged += [(ACCOUNT_ORDERS, ""), (REGISTERED_DOMAIN, request.registered_domain)]
        return charged

    async def _state(self, reads: LimitReads, bucket: str, key: str, now: datetime) -> BucketState:
        return (await self._states(reads, [(bucket, key)], now))[0]

    async def _states(
        self, reads: LimitReads, buckets: Sequence[tuple[str, str]], now: datetime
    ) -> list[BucketState]:
        """Each (bucket, key) rebuilt from its spends, all read in one query."""
        queries = []
        for bucket, key in buckets:
            limit = self.limits.of(bucket)
            # Admitted spends in one period number at most 2 x capacity (a full bucket plus
            # a period of refills); more means truncation, which replay treats safely.
            queries.append((bucket, key, now - limit.period, 2 * limit.capacity + 2))
        found = await reads.limit_spends_of(queries)
        states = []
        for (bucket, _key, since, most), spends in zip(queries, found, strict=True):
            complete = len(spends) < most and (not spends or spends[0] > since)
            states.append(replay(self.limits.of(bucket), spends, complete=complete))
        return states

    def _exhausted(self, bucket: str, key: str, at: datetime) -> Hold:
        limit = self.limits.of(bucket)
        return Hold(
            reason=_REASONS[bucket],
            # No time in the text: it is the next attempt's, and a waiting domain's next
            # attempt moves as others take tokens (a schedule write, not an event).
            message=(
                f"{_what(bucket, key)}: {limit.describe()} used up (Let's Encrypt's limit, "
                "counted here); the next attempt waits for a token"
            ),
            until=at,
        )

    def _paused(self, bucket: str, key: str, until: datetime) -> Hold:
        return Hold(
            reason=CA_RATE_LIMITED,
            message=(
                f"the CA answered rateLimited for {_what(bucket, key)}; "
                f"paused until {until.isoformat(timespec='seconds')}"
            ),
            until=until,
        )


def _what(bucket: str, key: str) -> str:
    if bucket == ACCOUNT:
        return "the ACME account"
    if bucket == ACCOUNT_ORDERS:
        return "new orders of the ACME account"
    if bucket == REGISTERED_DOMAIN:
        return f"new certificates for registered domain {key}"
    if bucket == NAME_SET:
        return f"certificates for the names {key.replace(',', ', ')}"
    return f"failed authorizations for {key}"
