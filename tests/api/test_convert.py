"""Model records to protos: field for field, timestamps exactly as ``Timestamp.FromDatetime``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from certbroker import lifecycle
from certbroker.api import convert
from certbroker.model import (
    CertificateInfo,
    ChallengeType,
    DnsObservation,
    Domain,
    KeyAlgorithm,
    LetsEncryptState,
    Material,
    RetryState,
    Source,
)
from certbroker.v1 import broker_pb2, domain_pb2

T = datetime(2026, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]


def _reference(when: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(when)
    return message


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(9000, 1, 1),
        timezones=st.one_of(st.none(), st.sampled_from(ZONES)),
    )
)
def test_timestamps_are_what_from_datetime_writes(when: datetime) -> None:
    # aware times take a shortcut (a snapshot converts several per domain); naive ones
    # are read as UTC, as FromDatetime reads them
    message = Timestamp()
    convert._ts(message, when)
    assert message == _reference(when)


def test_no_time_leaves_the_timestamp_unset() -> None:
    message = Timestamp()
    convert._ts(message, None)
    assert message == Timestamp()


def _record() -> Domain:
    """A domain with every field set (both certificates, retry, DNS, every time)."""
    cert = CertificateInfo(
        id=7,
        sans=("www.example.com", "example.com"),
        subject="CN=www.example.com",
        issuer="CN=Test CA",
        serial="07ab",
        not_before=T,
        not_after=T + timedelta(days=90),
        sha256_fingerprint="ab" * 32,
        chain_pem="-----BEGIN CERTIFICATE-----\n...\n",
        key_algorithm="ECDSA_P256",
    )
    return Domain(
        name="www.example.com",
        app="my-app",
        letsencrypt_enabled=True,
        le_state=LetsEncryptState.IN_USE,
        serving=Source.CUSTOM,
        created_at=T,
        updated_at=T + timedelta(microseconds=1),
        key_algorithm=KeyAlgorithm.RSA_2048,
        challenge=ChallengeType.DNS_01,
        le_cert=cert,
        custom_cert=replace(cert, id=9, serial="09cd", not_after=T + timedelta(days=365)),
        retry=RetryState(
            attempt=4,
            next_attempt_at=T + timedelta(minutes=8),
            last_error_reason="CAA_FORBIDS",
            last_error_message="CAA forbids",
            last_error_at=T + timedelta(seconds=1),
        ),
        dns=DnsObservation(
            answered=("198.51.100.7",),
            expected=("192.0.2.1",),
            points_to_platform=False,
            checked_at=T + timedelta(seconds=2),
        ),
        next_run_at=T + timedelta(hours=1),
        action_required="add a CNAME",
        custom_expiring=True,
        include_apex=True,
        revision=42,
    )


def _stamp(when: datetime) -> Timestamp:
    return _reference(when)


def test_a_domain_converts_field_for_field() -> None:
    # written field by field into the message (a snapshot builds events in place); the
    # result must be exactly the message the constructor-built conversion gave
    record = _record()
    now = T + timedelta(days=10)
    assert record.le_cert is not None and record.custom_cert is not None
    due = lifecycle.renewal_due(record)
    assert due is not None

    def cert(info: CertificateInfo, days_left: int) -> domain_pb2.CertificateInfo:
        return domain_pb2.CertificateInfo(
            sans=list(info.sans),
            subject=info.subject,
            issuer=info.issuer,
            serial=info.serial,
            sha256_fingerprint=info.sha256_fingerprint,
            chain_pem=info.chain_pem,
            days_left=days_left,
            key_algorithm=info.key_algorithm,
            not_before=_stamp(info.not_before),
            not_after=_stamp(info.not_after),
        )

    expected = domain_pb2.Domain(
        domain="www.example.com",
        app="my-app",
        disable_letsencrypt=False,
        lets_encrypt_state=domain_pb2.LETS_ENCRYPT_STATE_IN_USE,
        serving_source=domain_pb2.CERTIFICATE_SOURCE_CUSTOM,
        revision=42,
        key_algorithm=domain_pb2.KEY_ALGORITHM_RSA_2048,
        challenge_type=domain_pb2.CHALLENGE_TYPE_DNS_01,
        action_required="add a CNAME",
        custom_certificate_expiring=True,
        include_apex=True,
        lets_encrypt_certificate=cert(record.le_cert, 80),
        renewal_time=_stamp(due),
        custom_certificate=cert(record.custom_cert, 355),
        retry=domain_pb2.RetryState(
            attempt=4,
            last_error_reason="CAA_FORBIDS",
            last_error_message="CAA forbids",
            next_attempt_time=_stamp(T + timedelta(minutes=8)),
            last_error_time=_stamp(T + timedelta(seconds=1)),
        ),
        dns=domain_pb2.DnsObservation(
            answered=["198.51.100.7"],
            expected=["192.0.2.1"],
            points_to_platform=False,
            check_time=_stamp(T + timedelta(seconds=2)),
        ),
        create_time=_stamp(T),
        update_time=_stamp(T + timedelta(microseconds=1)),
        next_check_time=_stamp(T + timedelta(hours=1)),
    )
    assert convert.domain(record, now) == expected
    in_place = broker_pb2.WatchEvent()
    convert.fill_domain(in_place.domain, record, now)
    assert in_place.domain == expected


def test_a_bare_domain_has_an_empty_retry_and_no_certificates() -> None:
    record = Domain(
        name="a.example.com",
        app="x",
        letsencrypt_enabled=False,
        le_state=LetsEncryptState.DISABLED,
        serving=Source.NONE,
        created_at=T,
        updated_at=T,
    )
    message = convert.domain(record, T)
    assert message.HasField("retry")  # as before: the retry block is always there
    assert not message.HasField("lets_encrypt_certificate")
    assert not message.HasField("custom_certificate")
    assert not message.HasField("dns")
    assert not message.HasField("next_check_time")


def test_material_is_written_whole() -> None:
    found = Material(source=Source.LETS_ENCRYPT, chain_pem="chain", private_key_pem="key")
    expected = broker_pb2.ServingMaterial(
        source=domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT,
        chain_pem="chain",
        private_key_pem="key",
    )
    assert convert.material(found) == expected
    event = broker_pb2.WatchEvent()
    convert.fill_material(event.serving, found)
    assert event.HasField("serving") and event.serving == expected
