"""Frozen records the rest of the service passes around. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class LetsEncryptState(StrEnum):
    """The seed's statuses (plus DISABLED for --no-letsencrypt).

    PENDING_DNS, CREATING and ACTION_REQUIRED are transient (the scheduler keeps
    working the domain); IN_USE, NOT_USED and DISABLED are resting states that
    only renewal, an expiry or a user action move.
    """

    PENDING_DNS = "PENDING_DNS"
    CREATING = "CREATING"
    IN_USE = "IN_USE"
    NOT_USED = "NOT_USED"
    ACTION_REQUIRED = "ACTION_REQUIRED"
    DISABLED = "DISABLED"


class Source(StrEnum):
    """Which certificate serves a domain."""

    NONE = "NONE"
    LETS_ENCRYPT = "LETS_ENCRYPT"
    CUSTOM = "CUSTOM"


class KeyAlgorithm(StrEnum):
    ECDSA_P256 = "ECDSA_P256"
    RSA_2048 = "RSA_2048"


class ChallengeType(StrEnum):
    HTTP_01 = "HTTP_01"
    DNS_01 = "DNS_01"


class EventType(StrEnum):
    DOMAIN_UPDATED = "DOMAIN_UPDATED"
    DOMAIN_REMOVED = "DOMAIN_REMOVED"
    CHALLENGE_ADDED = "CHALLENGE_ADDED"
    CHALLENGE_REMOVED = "CHALLENGE_REMOVED"


@dataclass(frozen=True)
class CertificateInfo:
    """Public facts of a stored certificate; ``id`` finds its (encrypted) key in the store."""

    id: int
    sans: tuple[str, ...]
    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    sha256_fingerprint: str
    chain_pem: str
    key_algorithm: str
    # When the broker stored it, by the broker's clock (None for parsed, unstored ones).
    received_at: datetime | None = None

    @property
    def lifetime_seconds(self) -> float:
        return (self.not_after - self.not_before).total_seconds()


@dataclass(frozen=True)
class RetryState:
    """Backoff facts, persisted so a restart neither resets nor loses them."""

    attempt: int = 0
    next_attempt_at: datetime | None = None
    last_error_reason: str = ""
    last_error_message: str = ""
    last_error_at: datetime | None = None
    # When a caller last forced a retry of this failing domain (IssueCertificate on a
    # known name); forced retries are rationed by it so they cannot drain CA quotas.
    forced_at: datetime | None = None


@dataclass(frozen=True)
class RenewalPlan:
    """When the CA asks us to renew the current Let's Encrypt certificate (ARI, RFC 9773).

    ``at``: a time the broker picked inside the CA's suggested window (None:
    no window known, renew at two thirds of the lifetime). ``next_check``:
    when to fetch the window again (the CA's Retry-After); None when the CA
    offers no renewal information or the certificate is gone.
    """

    at: datetime | None = None
    next_check: datetime | None = None


@dataclass(frozen=True)
class DnsObservation:
    answered: tuple[str, ...] = ()
    expected: tuple[str, ...] = ()
    points_to_platform: bool = False
    checked_at: datetime | None = None


@dataclass(frozen=True)
class Domain:
    name: str
    app: str
    letsencrypt_enabled: bool
    le_state: LetsEncryptState
    serving: Source
    created_at: datetime
    updated_at: datetime
    key_algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256
    challenge: ChallengeType = ChallengeType.HTTP_01
    le_cert: CertificateInfo | None = None
    custom_cert: CertificateInfo | None = None
    retry: RetryState = field(default_factory=RetryState)
    dns: DnsObservation | None = None
    next_run_at: datetime | None = None
    action_required: str = ""
    custom_expiring: bool = False
    include_apex: bool = False
    # Where the customer's ``_acme-challenge`` CNAME must point (``certbroker.delegation``):
    # bound to the owner, set when a DNS-01 domain is added, "" for HTTP-01 ones.
    delegation_label: str = ""
    renewal: RenewalPlan = field(default_factory=RenewalPlan)
    revision: int = 0

    @property
    def is_wildcard(self) -> bool:
        return self.name.startswith("*.")

    @property
    def order_names(self) -> tuple[str, ...]:
        """The names one certificate covers: the domain, and its apex when asked."""
        if self.include_apex and self.is_wildcard:
            return (self.name, self.name.removeprefix("*."))
        return (self.name,)


@dataclass(frozen=True)
class Event:
    """One row of the store's event log; ``revision`` is its global, growing id."""

    revision: int
    type: EventType
    domain_name: str
    domain: Domain | None
    at: datetime
    challenge_token: str = ""
    challenge_key_authorization: str = ""


@dataclass(frozen=True)
class Material:
    """What a router serves: the chain and the decrypted key. Never logged, never stored plain."""

    source: Source
    chain_pem: str
    private_key_pem: str = field(repr=False)
