"""Domain rows and event payloads: exact round trips, microsecond times, naive refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certbroker.model import (
    CertificateInfo,
    ChallengeType,
    DnsObservation,
    Domain,
    KeyAlgorithm,
    LetsEncryptState,
    RetryState,
    Source,
)
from certbroker.store.codec import (
    DOMAIN_COLUMNS,
    domain_from_row,
    domain_to_row,
    from_micros,
    to_micros,
)

T = datetime(2026, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)


def _cert(cert_id: int, days: int) -> CertificateInfo:
    return CertificateInfo(
        id=cert_id,
        sans=("www.example.com", "example.com"),
        subject="CN=www.example.com",
        issuer="CN=Test CA",
        serial=f"0{cert_id}ab",
        not_before=T,
        not_after=T + timedelta(days=days),
        sha256_fingerprint="ab" * 32,
        chain_pem="-----BEGIN CERTIFICATE-----\n...\n",
        key_algorithm="ECDSA_P256",
    )


def _full_domain() -> Domain:
    return Domain(
        name="www.example.com",
        app="my-app",
        letsencrypt_enabled=True,
        le_state=LetsEncryptState.ACTION_REQUIRED,
        serving=Source.CUSTOM,
        created_at=T,
        updated_at=T + timedelta(microseconds=1),
        key_algorithm=KeyAlgorithm.RSA_2048,
        challenge=ChallengeType.DNS_01,
        le_cert=_cert(7, 90),
        custom_cert=_cert(9, 365),
        retry=RetryState(
            attempt=4,
            next_attempt_at=T + timedelta(minutes=8, microseconds=3),
            last_error_reason="CAA_FORBIDS",
            last_error_message="CAA on example.com allows only other.ca",
            last_error_at=T + timedelta(seconds=1),
        ),
        dns=DnsObservation(
            answered=("198.51.100.7",),
            expected=("192.0.2.1", "192.0.2.2"),
            points_to_platform=True,
            checked_at=T + timedelta(seconds=2, microseconds=999_999),
        ),
        next_run_at=T + timedelta(hours=1, microseconds=5),
        action_required="add _acme-challenge CNAME",
        custom_expiring=True,
        revision=42,
    )


def test_every_field_set_round_trips_through_the_row() -> None:
    domain = _full_domain()
    certs = {c.id: c for c in (domain.le_cert, domain.custom_cert) if c is not None}
    row = domain_to_row(domain)
    assert set(row) == set(DOMAIN_COLUMNS)
    assert domain_from_row(row, lambda cert_id: certs.get(cert_id)) == domain


def test_every_field_set_round_trips_through_the_json_event_payload() -> None:
    domain = _full_domain()
    certs = {c.id: c for c in (domain.le_cert, domain.custom_cert) if c is not None}
    payload = json.loads(json.dumps(domain_to_row(domain)))
    assert domain_from_row(payload, certs.get) == domain


@pytest.mark.parametrize("column", ["le_state", "serving", "key_algorithm", "challenge"])
def test_every_enum_value_decodes_and_an_unknown_one_is_refused(column: str) -> None:
    row = domain_to_row(_full_domain())
    enum = {
        "le_state": LetsEncryptState,
        "serving": Source,
        "key_algorithm": KeyAlgorithm,
        "challenge": ChallengeType,
    }[column]
    for member in enum:
        decoded = domain_from_row({**row, column: member.value}, lambda _: None)
        assert getattr(decoded, column) is member  # the model's fields share the names
    with pytest.raises(ValueError):
        domain_from_row({**row, column: "NO_SUCH_VALUE"}, lambda _: None)


def test_a_minimal_domain_round_trips() -> None:
    domain = Domain(
        name="example.org",
        app="a",
        letsencrypt_enabled=False,
        le_state=LetsEncryptState.DISABLED,
        serving=Source.NONE,
        created_at=T,
        updated_at=T,
    )
    row = domain_to_row(domain)
    assert row["le_cert_id"] is None and row["dns_json"] is None and row["next_run_at"] is None
    assert domain_from_row(row, lambda _id: None) == domain


def test_certificates_are_stored_by_id() -> None:
    row = domain_to_row(_full_domain())
    assert (row["le_cert_id"], row["custom_cert_id"]) == (7, 9)


def test_to_micros_is_exact_to_the_microsecond() -> None:
    assert to_micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, 1, tzinfo=UTC)) == 1_000_001
    assert to_micros(T) == int(T.replace(microsecond=0).timestamp()) * 1_000_000 + 789_012
    assert to_micros(None) is None
    assert from_micros(None) is None


def test_to_micros_before_the_epoch() -> None:
    when = datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)
    assert to_micros(when) == -500_000
    assert from_micros(-500_000) == when


def test_to_micros_honours_the_offset() -> None:
    paris = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    assert to_micros(paris) == to_micros(datetime(2026, 1, 1, tzinfo=UTC))


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_micros(datetime(2026, 1, 1))
    domain = _full_domain()
    naive = Domain(**{**domain.__dict__, "created_at": datetime(2026, 1, 1)})
    with pytest.raises(ValueError, match="naive"):
        domain_to_row(naive)


def test_from_micros_is_aware_utc() -> None:
    when = from_micros(1_700_000_000_123_456)
    assert when is not None
    assert when.utcoffset() == timedelta(0)
    assert when.microsecond == 123_456


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(9000, 1, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
        ),
    )
)
def test_micros_round_trip_exactly(when: datetime) -> None:
    micros = to_micros(when)
    assert micros is not None
    back = from_micros(micros)
    assert back == when
    assert back is not None and back.microsecond == when.astimezone(UTC).microsecond
    assert to_micros(back) == micros


@given(st.integers(min_value=-2_208_988_800_000_000, max_value=221_845_392_000_000_000))
def test_from_micros_gives_what_fromtimestamp_gives(micros: int) -> None:
    # the faster arithmetic must not change a single decoded time (or its tzinfo)
    seconds, rest = divmod(micros, 1_000_000)
    expected = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest)
    got = from_micros(micros)
    assert got == expected
    assert got is not None and got.tzinfo is expected.tzinfo
