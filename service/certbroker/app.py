"""Use cases the API calls: validate the request, apply it in one transaction, return.

Every mutation is idempotent (adding a domain twice returns it; uploading the
same bundle twice changes nothing) and writes the domain and its event
together, so a watcher never sees a state the store does not hold. Every
mutation names the app it acts for and is checked against the domain's owner
(and, when it claims names, against the family rule of ``certbroker.tenancy``)
inside the transaction that writes, so no concurrent change slips between the
check and the write.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from certbroker import lifecycle, outbox, tenancy
from certbroker.bounds import MAX_PAGE_TOKEN_LENGTH, check_length
from certbroker.clock import Clock
from certbroker.delegation import LabelKey, base_name
from certbroker.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from certbroker.model import (
    CertificateInfo,
    ChallengeType,
    Domain,
    KeyAlgorithm,
    LetsEncryptState,
    Material,
    Source,
)
from certbroker.names import normalise_domain
from certbroker.platform import Platform
from certbroker.ports import Sealer
from certbroker.store.base import NewCertificate, Store, Transaction
from certbroker.x509.sealing import KekError
from certbroker.x509.validate import ValidatedBundle

log = logging.getLogger(__name__)
DEFAULT_PAGE_SIZE = 100
# Certificates remembered as unopenable (logged once each); beyond it, logged every time.
_UNOPENABLE_LOGGED = 10_000
MAX_PAGE_SIZE = 1000


class Validator(Protocol):
    def validate(
        self, domain: str, certificate: bytes, private_key: bytes, now: datetime
    ) -> ValidatedBundle: ...


@dataclass(frozen=True)
class Page:
    domains: list[Domain]
    next_page_token: str


_TOKEN_PREFIX = "after:"  # noqa: S105 (a page token, not a secret)


def encode_page_token(after: str) -> str:
    """Opaque to callers; the prefix lets us tell our tokens from anything else."""
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{after}".encode()).decode().rstrip("=")


def _after_name(token: str) -> str:
    if not token:
        return ""
    check_length(token, "page_token", MAX_PAGE_TOKEN_LENGTH, reason="PAGE_TOKEN_INVALID")
    try:
        padded = token + "=" * (-len(token) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        text = ""
    if not text.startswith(_TOKEN_PREFIX):
        raise InvalidArgument.one(
            "page_token", "is not a token this server returned", reason="PAGE_TOKEN_INVALID"
        )
    return text.removeprefix(_TOKEN_PREFIX)


def _serving_cert(domain: Domain) -> CertificateInfo | None:
    """The certificate a router serves for ``domain``, if any."""
    if domain.serving is Source.CUSTOM:
        return domain.custom_cert
    if domain.serving is Source.LETS_ENCRYPT:
        return domain.le_cert
    return None


def _known(name: str, found: Domain | None) -> Domain:
    if found is None:
        raise NotFound(f"domain {name} is not known", reason="DOMAIN_NOT_FOUND")
    return found


class Broker:
    """The broker's use cases over an injected store, clock, sealer, validator and label key.

    ``app`` on the mutations of an existing domain is ``None`` for an operator
    acting across tenants (``tenancy.acting_app`` decides who may).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        sealer: Sealer,
        validator: Validator,
        labels: LabelKey,
        wake_scheduler: Callable[[], None] = lambda: None,
        *,
        forced_retry_interval: timedelta = lifecycle.FORCED_RETRY_INTERVAL,
        dns01_configured: bool = True,
        platform: Platform | None = None,
    ) -> None:
        self._store = store
        self._platform = platform if platform is not None else Platform()
        self._clock = clock
        self._sealer = sealer
        self._validator = validator
        self._labels = labels
        self._wake = wake_scheduler
        self._forced_retry_interval = forced_retry_interval
        self._dns01_configured = dns01_configured
        self._unopenable: set[int] = set()  # certificates whose sealed key failed to open

    async def issue_certificate(
        self,
        domain: str,
        app: str,
        *,
        disable_letsencrypt: bool = False,
        key_algorithm: KeyAlgorithm | None = None,
        challenge: ChallengeType | None = None,
        include_apex: bool = False,
        renew: bool = False,
    ) -> Domain:
        name = self.normalise(domain)
        app = tenancy.check_app(app)
        if renew and disable_letsencrypt:
            raise InvalidArgument.one(
                "renew",
                "renewing asks Let's Encrypt for a certificate: not with disable_letsencrypt",
                reason="RENEW_INVALID",
            )
        if include_apex and not name.startswith("*."):
            raise InvalidArgument.one(
                "include_apex",
                "only a wildcard (*.example.com) has an apex to add",
                reason="INCLUDE_APEX_INVALID",
            )
        if name.startswith("*.") and challenge is ChallengeType.HTTP_01:
            raise InvalidArgument.one(
                "challenge_type",
                "a wildcard can only be validated with DNS-01",
                reason="CHALLENGE_INVALID",
            )
        now = self._clock.now()
        async with self._store.transaction() as tx:
            existing = await tx.get_domain(name)
            if existing is not None:
                self._platform.check_mutation(existing, app)
                tenancy.check_owner(existing, app)
                if include_apex and not existing.include_apex:  # the apex joins the claim
                    self._platform.check_claim(tenancy.Claim(name, True))
                    await self._check_family(tx, tenancy.Claim(name, True), app)
                updated = self._settings_or_retry(
                    existing, now, not disable_letsencrypt, key_algorithm, include_apex, renew
                )
                self._check_dns01(updated)
                result = await outbox.save(tx, existing, updated)
            else:
                self._platform.check_claim(tenancy.Claim(name, include_apex))
                await self._check_family(tx, tenancy.Claim(name, include_apex), app)
                fresh = Domain(
                    name=name,
                    app=app,
                    letsencrypt_enabled=not disable_letsencrypt,
                    le_state=(
                        LetsEncryptState.DISABLED
                        if disable_letsencrypt
                        else LetsEncryptState.PENDING_DNS
                    ),
                    serving=Source.NONE,
                    created_at=now,
                    updated_at=now,
                    key_algorithm=key_algorithm or KeyAlgorithm.ECDSA_P256,
                    include_apex=include_apex,
                    challenge=challenge
                    or (ChallengeType.DNS_01 if name.startswith("*.") else ChallengeType.HTTP_01),
                )
                self._check_dns01(fresh)
                if lifecycle.uses_dns01(fresh):
                    fresh = replace(fresh, delegation_label=await self._label(tx, name, app))
                fresh = await self._carried_backoff(tx, fresh, now)
                result = await tx.put_domain(lifecycle.settle(fresh, now))
        self._wake()
        return result

    def _check_dns01(self, domain: Domain) -> None:
        """A domain that needs DNS-01 for Let's Encrypt is refused while DNS-01 is not set up.

        Accepting it would only park it (NOT_CONFIGURED) where nobody calling sees
        why; a domain that opted out of Let's Encrypt needs no challenge at all.
        """
        if (
            not self._dns01_configured
            and domain.letsencrypt_enabled
            and lifecycle.uses_dns01(domain)
        ):
            what = "a wildcard" if domain.is_wildcard else "a DNS-01 domain"
            raise FailedPrecondition(
                f"{domain.name} is {what} and this broker has no DNS-01 zone "
                "(CERTBROKER_DNS01_ZONE, _SERVER and _TSIG_KEY are not set): it cannot "
                "obtain the certificate; ask the operator to configure DNS-01, or add it "
                "with Let's Encrypt disabled and upload a custom certificate",
                reason="DNS01_NOT_CONFIGURED",
            )

    def _settings_or_retry(
        self,
        existing: Domain,
        now: datetime,
        letsencrypt: bool,
        key_algorithm: KeyAlgorithm | None,
        include_apex: bool,
        renew: bool = False,
    ) -> Domain:
        """IssueCertificate on a known domain: a settings change, or else "retry now".

        ``renew`` on a domain with a Let's Encrypt certificate is a forced renewal
        (``_renew``); without one it is the same "retry now".

        A call that changes a setting (Let's Encrypt on/off, key algorithm, apex) is
        applied and never refused; it runs the next step at once only where that is
        free (nothing failed yet), so it is no way around a backoff. A call that
        changes nothing is a forced retry: a domain that is backing off gets one per
        forced-retry interval, and sooner calls RESOURCE_EXHAUSTED/RETRY_TOO_SOON.
        """
        updated = lifecycle.set_letsencrypt(existing, letsencrypt, now)
        if key_algorithm is not None:
            updated = replace(updated, key_algorithm=key_algorithm)
        if include_apex:
            updated = replace(updated, include_apex=True)
        if renew and updated.le_cert is not None:
            return self._renew(existing, updated, now)
        if lifecycle.changed(existing, updated):
            if lifecycle.backing_off(updated, now):
                return lifecycle.settle(updated, now)
            return lifecycle.retry_now(updated, now)
        wait = lifecycle.forced_retry_wait(existing, now, self._forced_retry_interval)
        if wait is not None:
            raise ResourceExhausted(
                f"domain {existing.name} is backing off after {existing.retry.attempt} failed "
                f"attempts and was retried on request recently; the next forced retry is "
                f"allowed in {int(wait.total_seconds()) + 1} s (the next attempt is scheduled "
                "for next_attempt_time)",
                retry_after=wait,
                reason="RETRY_TOO_SOON",
            )
        return lifecycle.retry_now(existing, now)

    def _renew(self, existing: Domain, updated: Domain, now: datetime) -> Domain:
        """A forced renewal: an order the CA counts, so one per forced-retry interval.

        Refused before anything is written (the caller's transaction rolls back),
        settings changes in the same call included. A renewal already due (or
        failing and backing off) runs now as in "retry now"; otherwise the
        certificate's renewal time becomes now.
        """
        wait = lifecycle.forced_renewal_wait(existing, now, self._forced_retry_interval)
        if wait is not None:
            raise ResourceExhausted(
                f"domain {existing.name} was renewed or retried on request recently; the next "
                f"forced renewal is allowed in {int(wait.total_seconds()) + 1} s (the "
                "certificate is renewed on its own at renewal_time)",
                retry_after=wait,
                reason="RETRY_TOO_SOON",
            )
        if lifecycle.needs_issuance(updated, now):
            return lifecycle.retry_now(updated, now)
        return lifecycle.renew_now(updated, now)

    async def upload_custom(
        self, domain: str, app: str | None, certificate: bytes, private_key: bytes
    ) -> Domain:
        name = self.normalise(domain)
        now = self._clock.now()
        current = await self._existing(name)
        self._platform.check_mutation(current, app)  # before the costly parse; again below
        tenancy.check_owner(current, app)
        bundle = self._validator.validate(name, certificate, private_key, now)
        custom = current.custom_cert
        if custom is not None and custom.sha256_fingerprint == bundle.info.sha256_fingerprint:
            return current  # the same bundle again: a no-op
        sealed = self._sealer.seal(bundle.key_pem.encode(), name)
        async with self._store.transaction() as tx:
            latest = await self._in_tx(tx, name)
            self._platform.check_mutation(latest, app)
            tenancy.check_owner(latest, app)
            custom = latest.custom_cert
            if custom is not None and custom.sha256_fingerprint == bundle.info.sha256_fingerprint:
                return latest  # a concurrent upload of the same bundle won: still a no-op
            info = await tx.add_certificate(
                NewCertificate(
                    domain=name, source=Source.CUSTOM, info=bundle.info, key_sealed=sealed
                )
            )
            result = await tx.put_domain(lifecycle.custom_installed(latest, info, now))
        self._wake()
        return result

    async def delete_custom(self, domain: str, app: str | None) -> Domain:
        name = self.normalise(domain)
        now = self._clock.now()
        async with self._store.transaction() as tx:
            current = await self._in_tx(tx, name)
            self._platform.check_mutation(current, app)
            tenancy.check_owner(current, app)
            if current.custom_cert is None:
                return current  # nothing to delete: idempotent
            result = await tx.put_domain(
                lifecycle.custom_removed(current, now, self._forced_retry_interval)
            )
        self._wake()
        return result

    def normalise(self, domain: str, field: str = "domain") -> str:
        """A caller's domain name, normalised; the platform's own may be public suffixes."""
        return normalise_domain(domain, field, exempt=self._platform.names)

    async def get_status(self, domain: str, app: str = "") -> Domain:
        """The domain's row; with ``app``, only if that app owns it (a tenant's read scope)."""
        name = self.normalise(domain)
        owner = tenancy.check_app(app) if app else None
        record = await self._existing(name)
        tenancy.check_owner(record, owner)
        return record

    async def remove_domain(self, domain: str, app: str | None) -> int:
        """Remove the domain; a backoff in progress stays with the name (``_carried_backoff``)."""
        name = self.normalise(domain)
        now = self._clock.now()
        async with self._store.transaction() as tx:
            current = await self._in_tx(tx, name)
            self._platform.check_mutation(current, app, removing=True)
            tenancy.check_owner(current, app)
            if lifecycle.backing_off(current, now):
                await tx.keep_backoff(name, current.app, current.retry, now)
            return await tx.delete_domain(replace(current, updated_at=now))

    async def list_domains(self, app: str, page_size: int, page_token: str) -> Page:
        if page_size < 0:
            raise InvalidArgument.one(
                "page_size", "must not be negative", reason="PAGE_SIZE_INVALID"
            )
        check_length(app, "app", tenancy.MAX_APP_LENGTH, reason="APP_INVALID")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _after_name(page_token)
        domains = await self._store.list_domains(app.strip() or None, after, size + 1)
        more = len(domains) > size
        domains = domains[:size]
        token = encode_page_token(domains[-1].name) if more and domains else ""
        return Page(domains=domains, next_page_token=token)

    async def snapshot_page(self, after: str, limit: int, app: str | None = None) -> list[Domain]:
        """Every domain (of ``app``), a page at a time in name order (the watch snapshot)."""
        return await self._store.list_domains(app, after, limit)

    async def snapshot_domains(self, names: Iterable[str]) -> list[Domain]:
        """The domains of ``names`` that exist, in that order (a snapshot filtered by name)."""
        found = [await self._store.get_domain(name) for name in names]
        return [domain for domain in found if domain is not None]

    async def serving_material(self, domain: Domain) -> Material | None:
        """The chain and decrypted key a router must serve; for router callers only."""
        cert = _serving_cert(domain)
        if cert is None:
            return None
        sealed = await self._store.load_key(cert.id)
        return None if sealed is None else self._open(domain, cert, sealed)

    async def serving_materials(self, domains: Iterable[Domain]) -> dict[str, Material]:
        """``serving_material`` of many domains (a snapshot page), by name; the keys in one read.

        Domains serving nothing, whose certificate is gone meanwhile, or whose key does
        not open (``_open``) are left out.
        """
        serving = [(d, cert) for d in domains if (cert := _serving_cert(d)) is not None]
        sealed = await self._store.load_keys([cert.id for _, cert in serving])
        opened = {
            d.name: self._open(d, cert, sealed[cert.id]) for d, cert in serving if cert.id in sealed
        }
        return {name: material for name, material in opened.items() if material is not None}

    def _open(self, domain: Domain, cert: CertificateInfo, sealed: bytes) -> Material | None:
        try:
            key_pem = self._sealer.open(sealed, domain.name).decode()
        except KekError as error:
            # One damaged row (a bad restore, a hand edit) must not fail every router's
            # stream at the same event, over and over, each time with a traceback: the
            # domain is sent without material, and the damage is logged once.
            if cert.id not in self._unopenable:
                if len(self._unopenable) < _UNOPENABLE_LOGGED:
                    self._unopenable.add(cert.id)
                log.error(
                    "the sealed key of %s (certificate %d) does not open: %s; routers get "
                    "no key for it until a new certificate is stored",
                    domain.name,
                    cert.id,
                    error,
                )
            return None
        return Material(source=domain.serving, chain_pem=cert.chain_pem, private_key_pem=key_pem)

    @staticmethod
    async def _carried_backoff(tx: Transaction, fresh: Domain, now: datetime) -> Domain:
        """A name removed while backing off comes back backing off, whoever adds it.

        Otherwise removing a failing domain and adding it again would order at once,
        each time: a loop spending the shared ACME account's order and failed-validation
        limits (which count per account and name, not per app), as retry-now once did.
        The error's reason and message are only shown to the app they happened to.
        """
        carried = await tx.take_backoff(fresh.name, now)
        if carried is None:
            return fresh
        owner, retry = carried
        if owner != fresh.app:
            retry = replace(
                retry,
                last_error_reason="NAME_BACKING_OFF",
                last_error_message=(
                    f"{fresh.name} failed validation recently ({retry.attempt} attempts); "
                    "the next attempt waits for next_attempt_time"
                ),
            )
        return replace(fresh, retry=retry)

    async def _label(self, tx: Transaction, name: str, app: str) -> str:
        """The delegation label of a new DNS-01 row: its challenge sibling's, if it has one.

        ``x`` and ``*.x`` validate at the one ``_acme-challenge.x``, whose CNAME can
        point at one label only. They share an app (``tenancy``), and so the
        owner-bound label, except where the sibling kept a legacy label (migration
        003): the customer's record points there, and a different label for the
        newcomer would ask them to move it, breaking the sibling.
        """
        base = base_name(name)
        sibling = await tx.get_domain(base if name.startswith("*.") else f"*.{base}")
        if (
            sibling is not None
            and sibling.app == app
            and sibling.delegation_label
            and lifecycle.uses_dns01(sibling)
        ):
            return sibling.delegation_label
        return self._labels.label(app, name)

    @staticmethod
    async def _check_family(tx: Transaction, claim: tenancy.Claim, app: str) -> None:
        """Refuse ``claim`` if a row of another app overlaps it (``tenancy``'s family rule)."""
        names, covered_by = tenancy.neighbours(claim)
        # Every covered row overlaps the claim, so one is enough to refuse: a wildcard
        # over many other apps' names reads one of them, under the write lock.
        rows = await tx.family_rows(names, covered_by, app, limit=1)
        tenancy.check_family(claim, app, rows)

    async def _existing(self, name: str) -> Domain:
        return _known(name, await self._store.get_domain(name))

    @staticmethod
    async def _in_tx(tx: Transaction, name: str) -> Domain:
        return _known(name, await tx.get_domain(name))
