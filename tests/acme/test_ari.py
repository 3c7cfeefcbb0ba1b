"""RFC 9773 pieces: the certificate id, the window, and ``replaces`` in newOrder."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from certbroker.acme import ari
from tests.pki import NOW, TestPKI, cached_key

PKI = TestPKI("ARI", key_slot=8)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _leaf(serial: int) -> str:
    issuer = PKI.int2
    cert = (
        x509.CertificateBuilder()
        .subject_name(issuer.cert.subject)
        .issuer_name(issuer.cert.subject)
        .public_key(cached_key("p256", 9).public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=90))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(Encoding.PEM).decode()


def test_the_cert_id_is_the_aki_and_the_der_serial_with_its_sign_byte() -> None:
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(PKI.int2.key.public_key())  # type: ignore[arg-type]
    assert aki.key_identifier is not None
    # 0x87... has its high bit set: DER adds a 0x00 so the INTEGER stays positive.
    signed = bytes([0x00, 0x87, 0x65, 0x43, 0x21])
    assert ari.cert_id(_leaf(0x87654321)) == _b64(aki.key_identifier) + "." + _b64(signed)
    assert ari.cert_id(_leaf(0x1234)).endswith("." + _b64(bytes([0x12, 0x34])))


def test_a_window_is_read_with_its_retry_after_bounded() -> None:
    body = {
        "suggestedWindow": {"start": "2026-05-01T00:00:00Z", "end": "2026-05-03T00:00:00Z"},
        "explanationURL": "https://ca.test/why",
    }
    window = ari.parse_renewal_info(body, timedelta(hours=2))
    assert (window.start, window.end) == (
        datetime(2026, 5, 1, tzinfo=UTC),
        datetime(2026, 5, 3, tzinfo=UTC),
    )
    assert window.retry_after == timedelta(hours=2)
    assert window.explanation_url == "https://ca.test/why"
    assert ari.parse_renewal_info(body, None).retry_after == ari.DEFAULT_RETRY_AFTER
    assert ari.parse_renewal_info(body, timedelta(0)).retry_after == ari.MIN_RETRY_AFTER
    assert ari.parse_renewal_info(body, timedelta(days=9)).retry_after == ari.MAX_RETRY_AFTER


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"suggestedWindow": {"start": "2026-05-01T00:00:00Z"}},
        {"suggestedWindow": {"start": "yesterday", "end": "2026-05-03T00:00:00Z"}},
        {"suggestedWindow": {"start": "2026-05-03T00:00:00Z", "end": "2026-05-01T00:00:00Z"}},
        {"suggestedWindow": {"start": "2026-05-01T00:00:00", "end": "2026-05-03T00:00:00"}},
    ],
)
def test_an_unusable_window_is_an_ari_error(body: object) -> None:
    with pytest.raises(ari.ARIError):
        ari.parse_renewal_info(body, None)


def test_replaces_is_sent_only_when_given() -> None:
    ident = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="a.test")]
    assert ari.new_order_body(ident, "AAA.BBB").to_partial_json()["replaces"] == "AAA.BBB"
    assert "replaces" not in ari.new_order_body(ident, "").to_partial_json()
