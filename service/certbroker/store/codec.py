"""Domain records to and from the row shape the SQL backends share.

Event payloads are the same row as JSON, so replaying an event gives the
domain exactly as it was at that revision.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from certbroker.model import (
    CertificateInfo,
    ChallengeType,
    DnsObservation,
    Domain,
    KeyAlgorithm,
    LetsEncryptState,
    RenewalPlan,
    RetryState,
    Source,
)

DOMAIN_COLUMNS = (
    "name",
    "app",
    "letsencrypt_enabled",
    "le_state",
    "serving",
    "key_algorithm",
    "challenge",
    "le_cert_id",
    "custom_cert_id",
    "attempt",
    "next_attempt_at",
    "last_error_reason",
    "last_error_message",
    "last_error_at",
    "dns_json",
    "next_run_at",
    "action_required",
    "custom_expiring",
    "include_apex",
    "delegation_label",
    "forced_retry_at",
    "ari_renew_at",
    "ari_next_check",
    "revision",
    "created_at",
    "updated_at",
)
#: The columns a re-check moves without changing anything a watcher is shown
#: (``lifecycle.worth_an_event``): written by ``put_schedule``, with no event.
SCHEDULE_COLUMNS = (
    "next_attempt_at",
    "last_error_at",
    "forced_retry_at",
    "dns_json",
    "next_run_at",
    "ari_next_check",
)


def to_micros(when: datetime | None) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None:
        raise ValueError("naive datetime reached the store")
    return int(when.replace(microsecond=0).timestamp()) * 1_000_000 + when.microsecond


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_micros(value: int | None) -> datetime | None:
    if value is None:
        return None
    # The same aware UTC datetime as fromtimestamp(...).replace(microsecond=...), in
    # half the time: a snapshot decodes several per row, 100,000 rows at a time.
    return _EPOCH + timedelta(microseconds=int(value))


def must_time(value: int) -> datetime:
    when = from_micros(value)
    assert when is not None
    return when


def _dns_to_json(dns: DnsObservation | None) -> str | None:
    if dns is None:
        return None
    return json.dumps(
        {
            "answered": list(dns.answered),
            "expected": list(dns.expected),
            "points": dns.points_to_platform,
            "checked_at": to_micros(dns.checked_at),
        }
    )


def _dns_from_json(raw: str | None) -> DnsObservation | None:
    if not raw:
        return None
    data = json.loads(raw)
    return DnsObservation(
        answered=tuple(data["answered"]),
        expected=tuple(data["expected"]),
        points_to_platform=bool(data["points"]),
        checked_at=from_micros(data["checked_at"]),
    )


def domain_to_row(domain: Domain) -> dict[str, Any]:
    return {
        "name": domain.name,
        "app": domain.app,
        "letsencrypt_enabled": int(domain.letsencrypt_enabled),
        "le_state": domain.le_state.value,
        "serving": domain.serving.value,
        "key_algorithm": domain.key_algorithm.value,
        "challenge": domain.challenge.value,
        "le_cert_id": domain.le_cert.id if domain.le_cert else None,
        "custom_cert_id": domain.custom_cert.id if domain.custom_cert else None,
        "attempt": domain.retry.attempt,
        "next_attempt_at": to_micros(domain.retry.next_attempt_at),
        "last_error_reason": domain.retry.last_error_reason,
        "last_error_message": domain.retry.last_error_message,
        "last_error_at": to_micros(domain.retry.last_error_at),
        "dns_json": _dns_to_json(domain.dns),
        "next_run_at": to_micros(domain.next_run_at),
        "action_required": domain.action_required,
        "custom_expiring": int(domain.custom_expiring),
        "include_apex": int(domain.include_apex),
        "delegation_label": domain.delegation_label,
        "forced_retry_at": to_micros(domain.retry.forced_at),
        "ari_renew_at": to_micros(domain.renewal.at),
        "ari_next_check": to_micros(domain.renewal.next_check),
        "revision": domain.revision,
        "created_at": to_micros(domain.created_at),
        "updated_at": to_micros(domain.updated_at),
    }


# Values to members by dict: ``Enum(value)`` costs more than the rest of a column's
# decoding, and a snapshot decodes four per row, 100,000 rows. An unknown value still
# goes through the Enum call, which raises ValueError as before.
_LE_STATES = {member.value: member for member in LetsEncryptState}
_SOURCES = {member.value: member for member in Source}
_KEYS = {member.value: member for member in KeyAlgorithm}
_CHALLENGES = {member.value: member for member in ChallengeType}


def domain_from_row(row: Any, certificate: Callable[[Any], CertificateInfo | None]) -> Domain:
    return Domain(
        name=row["name"],
        app=row["app"],
        letsencrypt_enabled=bool(row["letsencrypt_enabled"]),
        le_state=_LE_STATES.get(row["le_state"]) or LetsEncryptState(row["le_state"]),
        serving=_SOURCES.get(row["serving"]) or Source(row["serving"]),
        key_algorithm=_KEYS.get(row["key_algorithm"]) or KeyAlgorithm(row["key_algorithm"]),
        challenge=_CHALLENGES.get(row["challenge"]) or ChallengeType(row["challenge"]),
        le_cert=certificate(row["le_cert_id"]),
        custom_cert=certificate(row["custom_cert_id"]),
        retry=RetryState(
            attempt=row["attempt"],
            next_attempt_at=from_micros(row["next_attempt_at"]),
            last_error_reason=row["last_error_reason"],
            last_error_message=row["last_error_message"],
            last_error_at=from_micros(row["last_error_at"]),
            forced_at=from_micros(row["forced_retry_at"]),
        ),
        dns=_dns_from_json(row["dns_json"]),
        next_run_at=from_micros(row["next_run_at"]),
        action_required=row["action_required"],
        custom_expiring=bool(row["custom_expiring"]),
        include_apex=bool(row["include_apex"]),
        delegation_label=row["delegation_label"],
        renewal=RenewalPlan(
            at=from_micros(row["ari_renew_at"]),
            next_check=from_micros(row["ari_next_check"]),
        ),
        revision=row["revision"],
        created_at=must_time(row["created_at"]),
        updated_at=must_time(row["updated_at"]),
    )


CERTIFICATE_COLUMNS = (
    "id",
    "chain_pem",
    "sans_json",
    "subject",
    "issuer",
    "serial",
    "not_before",
    "not_after",
    "fingerprint",
    "key_algorithm",
)


def certificate_from_row(row: Any) -> CertificateInfo:
    return CertificateInfo(
        id=row["id"],
        sans=tuple(json.loads(row["sans_json"])),
        subject=row["subject"],
        issuer=row["issuer"],
        serial=row["serial"],
        not_before=must_time(row["not_before"]),
        not_after=must_time(row["not_after"]),
        sha256_fingerprint=row["fingerprint"],
        chain_pem=row["chain_pem"],
        key_algorithm=row["key_algorithm"],
        received_at=from_micros(row["created_at"]),
    )
