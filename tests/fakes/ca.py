"""A fake ACME CA that enforces Let's Encrypt's four rate limits, as the CA does.

Boulder's GCRA, written out independently of ``certbroker.limits`` (so a
mistake there is not repeated here): per bucket a theoretical arrival time
``tat``; a request of cost 1 at ``now`` fits when ``max(tat, now) + interval -
now <= period``, else it is refused ``rateLimited`` with ``Retry-After`` the
wait until it would fit. What each step checks and spends, as at Let's Encrypt:

- new order: checks failed authorizations (per name), certificates per
  registered domain and per exact set of names; spends a new-orders token.
  Renewals (the same names issued before, within 90 days) skip the new-orders
  and registered-domain buckets; ARI renewals (``replaces``) skip everything;
- failed validation: spends a failed-authorizations token for the name;
- issuance: spends the registered-domain (not for renewals) and name-set tokens.

``LimitedIssuer`` puts it behind the scheduler's issuer port (``FakeIssuer``): every
order is checked against the buckets first, a refusal raised as the real issuer
raises it (``ACME_RATE_LIMITED`` with Retry-After).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from certbroker.acme.problems import AcmeProblem
from certbroker.clock import Clock
from certbroker.limits import Bucket, Limits
from certbroker.names import registered_domain
from certbroker.store.base import names_key
from tests.fakes.issuer import FakeCertificate, FakeIssuer

RENEWAL_LOOKBACK = timedelta(days=90)


class RateLimited(Exception):
    """The CA's ``urn:ietf:params:acme:error:rateLimited`` with its Retry-After."""

    def __init__(self, bucket: str, detail: str, retry_after: timedelta) -> None:
        super().__init__(detail)
        self.bucket = bucket
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class FakeOrder:
    names: tuple[str, ...]
    registered_domain: str
    renewal: bool
    exempt: bool


class FakeCA:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._tat: dict[tuple[str, str], datetime] = {}
        self._issued: dict[str, datetime] = {}
        self.refusals: Counter[str] = Counter()
        self.orders = 0
        self.issued = 0

    def new_order(
        self,
        names: tuple[str, ...],
        registered_domain: str,
        now: datetime,
        *,
        replaces: str | None = None,
        resumed: bool = False,
    ) -> FakeOrder:
        key = names_key(names)
        last = self._issued.get(key)
        renewal = last is not None and now - last < RENEWAL_LOOKBACK
        exempt = replaces is not None
        if resumed:
            return FakeOrder(names, registered_domain, renewal, exempt)
        if not exempt:
            for name in names:
                self._check("failed_authorizations", name, now, spend=False)
            if not renewal:
                self._check("registered_domain", registered_domain, now, spend=False)
            self._check("name_set", key, now, spend=False)
            if not renewal:
                self._check("account_orders", "", now, spend=True)
        self.orders += 1
        return FakeOrder(names, registered_domain, renewal, exempt)

    def fail_validation(self, order: FakeOrder, name: str, now: datetime) -> None:
        if not order.exempt:
            self._spend("failed_authorizations", name, now)

    def finalize(self, order: FakeOrder, now: datetime) -> None:
        if not order.exempt:
            if not order.renewal:
                self._spend("registered_domain", order.registered_domain, now)
            self._spend("name_set", names_key(order.names), now)
        self._issued[names_key(order.names)] = now
        self.issued += 1

    def record_issued(self, names: tuple[str, ...], at: datetime) -> None:
        """A certificate this CA issued before the test began (what makes a renewal)."""
        self._issued[names_key(names)] = at

    # -- GCRA ----------------------------------------------------------------------------

    def _bucket(self, bucket: str) -> Bucket:
        return self.limits.of(bucket)

    def _check(self, bucket: str, key: str, now: datetime, *, spend: bool) -> None:
        limit = self._bucket(bucket)
        tat = max(self._tat.get((bucket, key), now), now)
        new_tat = tat + limit.interval
        if new_tat - now > limit.period:
            self.refusals[bucket] += 1
            raise RateLimited(bucket, _detail(bucket, key, limit), new_tat - now - limit.period)
        if spend:
            self._tat[(bucket, key)] = new_tat

    def _spend(self, bucket: str, key: str, now: datetime) -> None:
        limit = self._bucket(bucket)
        self._tat[(bucket, key)] = max(self._tat.get((bucket, key), now), now) + limit.interval


def _detail(bucket: str, key: str, limit: Bucket) -> str:
    """Let's Encrypt's wording, with the documentation anchor that names the limit
    (what ``certbroker.acme.problems.rate_limit_scope`` reads)."""
    window = f"in the last {limit.period}"
    docs = "see https://letsencrypt.org/docs/rate-limits/#"
    if bucket == "account_orders":
        text, anchor = (
            f"too many new orders ({limit.capacity}) from this account",
            "new-orders-per-account",
        )
    elif bucket == "registered_domain":
        text = f'too many certificates ({limit.capacity}) already issued for "{key}"'
        anchor = "new-certificates-per-registered-domain"
    elif bucket == "name_set":
        text = f"too many certificates ({limit.capacity}) already issued for this exact set"
        anchor = "new-certificates-per-exact-set-of-identifiers"
    else:
        text = f'too many failed authorizations ({limit.capacity}) for "{key}"'
        anchor = "authorization-failures-per-identifier-per-account"
    return f"{text} {window}: {docs}{anchor}"


class LimitedIssuer(FakeIssuer):
    """The fake issuer, every order first checked against the CA's buckets."""

    def __init__(self, clock: Clock, ca: FakeCA) -> None:
        super().__init__(clock)
        self.ca = ca
        self.issued: list[str] = []  # first names, in order
        self.issued_at: dict[str, datetime] = {}

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
    ) -> FakeCertificate:
        now = self.clock.now()
        if self.down or self.account_lost:
            # Refused before the CA's limits are asked (Boulder looks up the account first).
            return await super().issue(names, key_pem, resume_url=resume_url)
        try:
            # Resuming an order the CA has costs no new-order token (it was spent);
            # one it cannot complete is replaced by a new order, which does.
            resumed = bool(resume_url) and resume_url not in self.unfinishable
            order = self.ca.new_order(
                tuple(names), registered_domain(names[0]), now, resumed=resumed
            )
        except RateLimited as refused:
            raise AcmeProblem(
                "ACME_RATE_LIMITED", refused.detail, retryable=True, retry_after=refused.retry_after
            ) from refused
        issued = await super().issue(
            names, key_pem, dns01=dns01, dns01_label=dns01_label, replaces=replaces,
            resume_url=resume_url, on_order_created=on_order_created,
        )  # fmt: skip
        self.ca.finalize(order, now)
        self.issued.append(names[0])
        self.issued_at[names[0]] = now
        return issued
