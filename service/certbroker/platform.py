"""The platform's own domains: the ``*.<region>`` wildcards every app is reachable under.

Every app answers at ``my-app.<region>.<platform domain>`` (``my-app.osc-fr1.example.io``)
with HTTPS by default. One wildcard certificate per region serves them all, so no
app needs an entry of its own. ``CERTBROKER_PLATFORM_DOMAINS`` lists those
wildcards; the broker keeps them like any domain (issued over DNS-01, renewed,
backed off, streamed to routers), with these differences:

Owned by the platform
    Their owner is ``tenancy.PLATFORM_APP`` (``_platform``), which is outside
    the app-name pattern, so no caller can send it. ``ListDomains``,
    ``GetStatus`` and the watch stream show them with that app and
    ``platform: true``.

Changed by configuration only
    Every app mutation of a configured platform domain (IssueCertificate,
    UploadCustom, DeleteCustom, RemoveDomain) is ``FAILED_PRECONDITION`` with
    reason ``PLATFORM_DOMAIN``, from every role, admin included: the platform's
    certificate for every app must not be one API call away from being replaced
    or removed.

Nothing under them for apps
    A new domain at or below a platform domain's base (``osc-fr1.example.io``,
    ``x.osc-fr1.example.io``, ``a.b.osc-fr1.example.io``, ``*.x.osc-fr1.example.io``)
    is refused with ``UNDER_PLATFORM_DOMAIN``. Any depth, not just the one
    label the wildcard covers: the platform's DNS usually answers a wildcard
    record for the region (DNS wildcards match at every depth), so an HTTP-01
    validation of ``other-app.osc-fr1.example.io`` would succeed for whoever
    asked, and routers would send that app's visitors to the asker's
    certificate (an exact name wins over the wildcard). Rows that were added
    before their platform domain was configured keep their owner (logged at
    start), as the family rule of ``certbroker.tenancy`` does for old overlaps.

Public suffixes allowed
    A platform's app domain belongs on the public suffix list (browsers then
    keep one app's cookies from its neighbours), as ``herokuapp.com`` and
    ``eu.platform.sh`` are: the public-suffix refusal of ``certbroker.names``
    does not apply to configured platform domains.

Kept in step at start (``reconcile``)
    Each configured platform domain is created if missing and switched back on
    if it was retired (idempotent: a restart with the same configuration writes
    nothing). A platform domain dropped from the configuration is *retired*,
    not removed: Let's Encrypt is switched off (no more renewals), its
    certificate keeps serving until it expires (a configuration slip must not
    take HTTPS away from a whole region at once), its status says why
    (``PLATFORM_DOMAIN_RETIRED``), it stays the platform's (no app can take it
    or the names directly under it), and the admin role may remove it. A
    configured name already owned by an app stops the start: the operator
    decides.

DNS-01 without delegation
    The platform owns its zone, so the TXT values of an order are written
    directly at ``_acme-challenge.<base>`` in that zone (``zone``: the name's
    base unless ``CERTBROKER_PLATFORM_ZONE`` says otherwise), by the same RFC
    2136 + TSIG updater as delegated wildcards (``CERTBROKER_DNS01_SERVER``,
    ``CERTBROKER_DNS01_TSIG_KEY``). No customer record, no ``ACTION_REQUIRED``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Final

from certbroker import lifecycle, outbox, tenancy
from certbroker.clock import Clock
from certbroker.delegation import base_name, challenge_name
from certbroker.errors import FailedPrecondition
from certbroker.model import ChallengeType, Domain, LetsEncryptState, Source
from certbroker.store.base import Store, Transaction

log = logging.getLogger(__name__)

PLATFORM_DOMAIN: Final = "PLATFORM_DOMAIN"
UNDER_PLATFORM_DOMAIN: Final = "UNDER_PLATFORM_DOMAIN"
RETIRED: Final = "PLATFORM_DOMAIN_RETIRED"
_RETIRED_MESSAGE: Final = (
    "no longer in CERTBROKER_PLATFORM_DOMAINS: not renewed; its certificate serves until it "
    "expires; add it back to renew it, or remove it with the admin role"
)


class PlatformConflict(Exception):
    """A configured platform domain is already an app's domain; the start stops."""


def is_platform(domain: Domain) -> bool:
    """Owned by the platform (``tenancy.PLATFORM_APP``), configured or retired."""
    return lifecycle.is_platform(domain)


@dataclass(frozen=True)
class PlatformDomain:
    """One configured wildcard and the DNS zone its ``_acme-challenge`` name lives in."""

    name: str  # ``*.osc-fr1.example.io``, normalised
    zone: str  # ``osc-fr1.example.io`` or a parent, e.g. ``example.io``

    @property
    def base(self) -> str:
        return base_name(self.name)

    @property
    def challenge_name(self) -> str:
        """``_acme-challenge.<base>``: where the order's TXT values are written."""
        return challenge_name(self.name)


def _at_or_below(name: str, base: str) -> bool:
    return name == base or name.endswith("." + base)


class Platform:
    """The configured platform domains and the rules above. No I/O."""

    def __init__(self, domains: Iterable[PlatformDomain] = ()) -> None:
        self._domains = {d.name: d for d in domains}
        self.names: frozenset[str] = frozenset(self._domains)

    @classmethod
    def from_names(cls, names: Iterable[str], zone: str | None = None) -> Platform:
        """``zone`` None: each domain's zone is its base (``*.x.example.io``: ``x.example.io``)."""
        return cls(PlatformDomain(n, zone or base_name(n)) for n in names)

    def __iter__(self) -> Iterator[PlatformDomain]:
        return iter(self._domains.values())

    def __bool__(self) -> bool:
        return bool(self._domains)

    def get(self, name: str) -> PlatformDomain | None:
        return self._domains.get(name)

    def covering(self, name: str) -> PlatformDomain | None:
        """The platform domain ``name`` is at or below (its base, any depth), if any."""
        base = base_name(name)
        for domain in self._domains.values():
            if _at_or_below(base, domain.base):
                return domain
        return None

    def check_claim(self, claim: tenancy.Claim) -> None:
        """Refuse an app's new claim on a platform domain or on a name under one."""
        if claim.name in self._domains:
            raise _platform_domain(claim.name)
        for name in claim.certificate_names:
            found = self.covering(name)
            if found is not None:
                raise FailedPrecondition(
                    f"{claim.name} cannot be added: it is under the platform's own domain "
                    f"{found.name}, whose names belong to the platform's apps "
                    f"(my-app.{found.base} is served by the platform's certificate)",
                    reason=UNDER_PLATFORM_DOMAIN,
                )

    def check_mutation(self, domain: Domain, app: str | None, *, removing: bool = False) -> None:
        """Refuse an API change of a platform row, from any role.

        One exception: the admin role (``app`` None) may remove a *retired*
        platform domain (no longer configured), which nothing else can clean up.
        """
        if not is_platform(domain):
            return
        if domain.name not in self._domains and removing and app is None:
            return
        if domain.name not in self._domains:
            raise FailedPrecondition(
                f"domain {domain.name} was a platform domain (retired from "
                "CERTBROKER_PLATFORM_DOMAINS); only the admin role may remove it",
                reason=PLATFORM_DOMAIN,
            )
        raise _platform_domain(domain.name)


def _platform_domain(name: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"domain {name} is the platform's own domain: it is managed through the broker's "
        "configuration (CERTBROKER_PLATFORM_DOMAINS), not through the API",
        reason=PLATFORM_DOMAIN,
    )


@dataclass(frozen=True)
class Reconciled:
    """What ``reconcile`` did, for the start-up log."""

    added: tuple[str, ...] = ()
    resumed: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()
    app_rows_under: int = 0


def _fresh(name: str, clock: Clock) -> Domain:
    now = clock.now()
    domain = Domain(
        name=name,
        app=tenancy.PLATFORM_APP,
        letsencrypt_enabled=True,
        # No DNS to wait for: the platform's zone is the broker's to write.
        le_state=LetsEncryptState.CREATING,
        serving=Source.NONE,
        created_at=now,
        updated_at=now,
        challenge=ChallengeType.DNS_01,
    )
    return lifecycle.settle(domain, now)


def _resumed(row: Domain, clock: Clock) -> Domain:
    """A retired (or hand-altered) platform row configured again: renew it like before."""
    now = clock.now()
    updated = lifecycle.set_letsencrypt(row, True, now)
    if updated.retry.last_error_reason == RETIRED:
        retry = replace(updated.retry, last_error_reason="", last_error_message="")
        updated = replace(updated, retry=retry)
    updated = replace(updated, challenge=ChallengeType.DNS_01, include_apex=False)
    return lifecycle.settle(updated, now)


def _retired(row: Domain, clock: Clock) -> Domain:
    now = clock.now()
    updated = lifecycle.set_letsencrypt(row, False, now)
    retry = replace(updated.retry, last_error_reason=RETIRED, last_error_message=_RETIRED_MESSAGE)
    return lifecycle.settle(replace(updated, retry=retry), now)


async def _ensure(tx: Transaction, domain: PlatformDomain, clock: Clock) -> str:
    """Create or resume one configured platform domain; ``"added"``, ``"resumed"`` or ``""``."""
    row = await tx.get_domain(domain.name)
    if row is None:
        await tx.put_domain(_fresh(domain.name, clock))
        return "added"
    if not is_platform(row):
        raise PlatformConflict(
            f"CERTBROKER_PLATFORM_DOMAINS: {domain.name} is already a domain of app "
            f"{row.app!r}; remove it first (certbroker --app {row.app} domains-remove "
            f"'{domain.name}') or leave it out of the platform domains"
        )
    saved = await outbox.save(tx, row, _resumed(row, clock))
    return "resumed" if saved is not row and not row.letsencrypt_enabled else ""


async def reconcile(store: Store, clock: Clock, platform: Platform) -> Reconciled:
    """Make the store hold exactly the configured platform domains (see the module doc).

    One transaction: a start either applies the whole configuration or none of it.
    """
    added: list[str] = []
    resumed: list[str] = []
    retired: list[str] = []
    under = 0
    async with store.transaction() as tx:
        for domain in platform:
            outcome = await _ensure(tx, domain, clock)
            if outcome == "added":
                added.append(domain.name)
            elif outcome == "resumed":
                resumed.append(domain.name)
            rows = await tx.domains_under(domain.base, tenancy.PLATFORM_APP)
            if rows:
                shown = ", ".join(sorted(row.name for row in rows)[:5])
                more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
                log.warning(
                    "%d domains of apps are under the platform domain %s (added before it was "
                    "configured): %s%s; they keep their owners (remove any that is an app's "
                    "name of the platform: routers serve an exact name before the wildcard)",
                    len(rows),
                    domain.name,
                    shown,
                    more,
                )
            under += len(rows)
        after = ""
        while True:
            page = await store.list_domains(tenancy.PLATFORM_APP, after, 500)
            for row in page:
                if row.name in platform.names:
                    continue
                latest = await tx.get_domain(row.name)
                if latest is None or not is_platform(latest):
                    continue
                if latest.letsencrypt_enabled or latest.retry.last_error_reason != RETIRED:
                    await outbox.save(tx, latest, _retired(latest, clock))
                    retired.append(latest.name)
            if len(page) < 500:
                break
            after = page[-1].name
    return Reconciled(tuple(added), tuple(resumed), tuple(retired), under)
