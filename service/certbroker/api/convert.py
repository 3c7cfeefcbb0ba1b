"""Model records to proto messages and back. Never touches a private key except ``material``."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from certbroker import lifecycle, tenancy
from certbroker.doctor import Report, Verdict
from certbroker.model import (
    CertificateInfo,
    ChallengeType,
    Domain,
    Event,
    EventType,
    KeyAlgorithm,
    LetsEncryptState,
    Material,
    Source,
)
from certbroker.routers import RouterPage, ServingCounts
from certbroker.v1 import broker_pb2, domain_pb2

_STATE = {
    LetsEncryptState.PENDING_DNS: domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS,
    LetsEncryptState.CREATING: domain_pb2.LETS_ENCRYPT_STATE_CREATING,
    LetsEncryptState.IN_USE: domain_pb2.LETS_ENCRYPT_STATE_IN_USE,
    LetsEncryptState.NOT_USED: domain_pb2.LETS_ENCRYPT_STATE_NOT_USED,
    LetsEncryptState.ACTION_REQUIRED: domain_pb2.LETS_ENCRYPT_STATE_ACTION_REQUIRED,
    LetsEncryptState.DISABLED: domain_pb2.LETS_ENCRYPT_STATE_DISABLED,
}
_SOURCE = {
    Source.NONE: domain_pb2.CERTIFICATE_SOURCE_NONE,
    Source.LETS_ENCRYPT: domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT,
    Source.CUSTOM: domain_pb2.CERTIFICATE_SOURCE_CUSTOM,
}
_KEY = {
    KeyAlgorithm.ECDSA_P256: domain_pb2.KEY_ALGORITHM_ECDSA_P256,
    KeyAlgorithm.RSA_2048: domain_pb2.KEY_ALGORITHM_RSA_2048,
}
_KEY_BACK = {v: k for k, v in _KEY.items()}
_CHALLENGE = {
    ChallengeType.HTTP_01: domain_pb2.CHALLENGE_TYPE_HTTP_01,
    ChallengeType.DNS_01: domain_pb2.CHALLENGE_TYPE_DNS_01,
}
_CHALLENGE_BACK = {v: k for k, v in _CHALLENGE.items()}
_EVENT = {
    EventType.DOMAIN_UPDATED: broker_pb2.EVENT_TYPE_DOMAIN_UPDATED,
    EventType.DOMAIN_REMOVED: broker_pb2.EVENT_TYPE_DOMAIN_REMOVED,
    EventType.CHALLENGE_ADDED: broker_pb2.EVENT_TYPE_CHALLENGE_ADDED,
    EventType.CHALLENGE_REMOVED: broker_pb2.EVENT_TYPE_CHALLENGE_REMOVED,
}


def key_algorithm(value: int) -> KeyAlgorithm | None:
    return _KEY_BACK.get(value)  # type: ignore[call-overload,no-any-return]


def challenge_type(value: int) -> ChallengeType | None:
    return _CHALLENGE_BACK.get(value)  # type: ignore[call-overload,no-any-return]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(target: Timestamp, when: datetime | None) -> None:
    """``target.FromDatetime(when)``, several times faster for the aware times we hold.

    ``FromDatetime`` goes through ``utctimetuple`` and ``calendar.timegm`` in Python;
    a snapshot converts several times per domain, 100,000 domains at a time.
    """
    if when is None:
        return
    if when.tzinfo is None:
        target.FromDatetime(when)  # naive: FromDatetime's reading of it (as UTC)
        return
    since = when - _EPOCH
    target.seconds = since.days * 86400 + since.seconds
    target.nanos = since.microseconds * 1000


def certificate(cert: CertificateInfo, now: datetime) -> domain_pb2.CertificateInfo:
    message = domain_pb2.CertificateInfo()
    fill_certificate(message, cert, now)
    return message


def fill_certificate(
    message: domain_pb2.CertificateInfo, cert: CertificateInfo, now: datetime
) -> None:
    """``certificate`` written into ``message`` (a field of a larger one: no copy)."""
    message.SetInParent()
    message.sans.extend(cert.sans)
    message.subject = cert.subject
    message.issuer = cert.issuer
    message.serial = cert.serial
    message.sha256_fingerprint = cert.sha256_fingerprint
    message.chain_pem = cert.chain_pem
    message.days_left = math.floor((cert.not_after - now).total_seconds() / 86400)
    message.key_algorithm = cert.key_algorithm
    _ts(message.not_before, cert.not_before)
    _ts(message.not_after, cert.not_after)


def domain(record: Domain, now: datetime) -> domain_pb2.Domain:
    message = domain_pb2.Domain()
    fill_domain(message, record, now)
    return message


def fill_domain(message: domain_pb2.Domain, record: Domain, now: datetime) -> None:
    """``domain`` written into ``message``, e.g. a watch event's field: a snapshot builds
    100,000 of them, and each copy of a built message would cost as much again."""
    message.SetInParent()
    message.domain = record.name
    message.app = record.app
    message.disable_letsencrypt = not record.letsencrypt_enabled
    message.lets_encrypt_state = _STATE[record.le_state]
    message.serving_source = _SOURCE[record.serving]
    message.revision = record.revision
    message.key_algorithm = _KEY[record.key_algorithm]
    message.challenge_type = _CHALLENGE[record.challenge]
    message.action_required = record.action_required
    message.custom_certificate_expiring = record.custom_expiring
    message.include_apex = record.include_apex
    message.platform = record.app == tenancy.PLATFORM_APP
    if record.le_cert is not None:
        fill_certificate(message.lets_encrypt_certificate, record.le_cert, now)
        _ts(message.renewal_time, lifecycle.renewal_due(record))
    if record.custom_cert is not None:
        fill_certificate(message.custom_certificate, record.custom_cert, now)
    retry = record.retry
    message.retry.attempt = retry.attempt
    message.retry.last_error_reason = retry.last_error_reason
    message.retry.last_error_message = retry.last_error_message
    _ts(message.retry.next_attempt_time, retry.next_attempt_at)
    _ts(message.retry.last_error_time, retry.last_error_at)
    if record.dns is not None:
        message.dns.answered.extend(record.dns.answered)
        message.dns.expected.extend(record.dns.expected)
        message.dns.points_to_platform = record.dns.points_to_platform
        _ts(message.dns.check_time, record.dns.checked_at)
    _ts(message.create_time, record.created_at)
    _ts(message.update_time, record.updated_at)
    _ts(message.next_check_time, record.next_run_at)


def event(record: Event, now: datetime) -> broker_pb2.WatchEvent:
    message = broker_pb2.WatchEvent(revision=record.revision, type=_EVENT[record.type])
    if record.domain is not None:
        message.domain.CopyFrom(domain(record.domain, now))
    else:
        message.domain.domain = record.domain_name
    if record.challenge_token:
        message.challenge.token = record.challenge_token
        message.challenge.key_authorization = record.challenge_key_authorization
    return message


def material(found: Material) -> broker_pb2.ServingMaterial:
    message = broker_pb2.ServingMaterial()
    fill_material(message, found)
    return message


def fill_material(message: broker_pb2.ServingMaterial, found: Material) -> None:
    """``material`` written into ``message`` (a watch event's field: no copy)."""
    message.SetInParent()
    message.source = _SOURCE[found.source]
    message.chain_pem = found.chain_pem
    message.private_key_pem = found.private_key_pem


def with_routers(message: domain_pb2.Domain, counts: ServingCounts) -> domain_pb2.Domain:
    """Add how many live routers serve the domain's current revision (unary replies only)."""
    message.known_routers = counts.known
    message.serving_routers = counts.serving(message.revision)
    return message


def _duration(value: timedelta) -> Duration:
    message = Duration()
    message.FromTimedelta(value)
    return message


def report_reply(current_revision: int, interval: timedelta) -> broker_pb2.ReportServingResponse:
    return broker_pb2.ReportServingResponse(
        current_revision=current_revision, report_interval=_duration(interval)
    )


def routers(
    page: RouterPage, current_revision: int, interval: timedelta, *, identities: bool = True
) -> broker_pb2.ListRoutersResponse:
    """One ListRouters page; ``identities``: whether the caller may see certificate names."""
    message = broker_pb2.ListRoutersResponse(
        current_revision=current_revision,
        report_interval=_duration(interval),
        next_page_token=page.next_page_token,
    )
    for state in page.routers:
        report = state.report
        item = message.routers.add(
            router_id=report.router_id,
            identity=report.identity if identities else "",
            applied_revision=report.applied_revision,
            lag=current_revision - report.applied_revision,
            domain_count=report.domain_count,
            live=state.live,
        )
        _ts(item.first_seen_time, report.first_seen)
        _ts(item.last_seen_time, report.last_seen)
    return message


_VERDICT = {
    Verdict.OK: broker_pb2.CHECK_VERDICT_OK,
    Verdict.WARN: broker_pb2.CHECK_VERDICT_WARN,
    Verdict.FAIL: broker_pb2.CHECK_VERDICT_FAIL,
    Verdict.SKIPPED: broker_pb2.CHECK_VERDICT_SKIPPED,
}


def doctor_report(report: Report) -> broker_pb2.CheckDomainResponse:
    message = broker_pb2.CheckDomainResponse(
        domain=report.domain,
        checks=[
            broker_pb2.DomainCheck(
                name=c.name,
                verdict=_VERDICT[c.verdict],
                summary=c.summary,
                detail=c.detail,
                fix=c.fix,
            )
            for c in report.checks
        ],
        would_issue_now=report.would_issue_now,
        known=report.known,
        app=report.app,
        next_action=report.next_action,
    )
    _ts(message.next_action_time, report.next_action_at)
    _ts(message.check_time, report.checked_at)
    return message
