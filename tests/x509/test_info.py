"""certificate_info describes any chain (Let's Encrypt or custom) the same way."""

from __future__ import annotations

from datetime import UTC

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from certbroker.x509 import certificate_info, key_algorithm_name
from tests.pki import TestPKI, cached_key, pem_bundle


def test_info_of_a_chain(pki: TestPKI) -> None:
    leaf = pki.leaf("www.example.com", "Example.com", "*.example.com")
    chain = pem_bundle([leaf, pki.int2, pki.int1]).decode()
    info = certificate_info(chain, cert_id=42)
    assert info.id == 42
    assert info.sans == ("www.example.com", "example.com", "*.example.com")
    assert info.subject == "CN=www.example.com,O=certbroker tests"
    assert info.issuer == "CN=Test Intermediate CA 2,O=certbroker tests"
    assert info.serial == f"{leaf.cert.serial_number:x}"
    assert info.serial == info.serial.lower()
    assert info.not_before.tzinfo is UTC and info.not_after.tzinfo is UTC
    assert info.sha256_fingerprint == leaf.cert.fingerprint(hashes.SHA256()).hex()
    assert info.chain_pem == chain
    assert info.key_algorithm == "ECDSA_P256"
    assert info.lifetime_seconds == 90 * 86400


def test_info_without_san(pki: TestPKI) -> None:
    leaf = pki.leaf("cn-only.example.com", with_san=False)
    assert certificate_info(leaf.pem.decode()).sans == ()


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("p256", "ECDSA_P256"),
        ("p384", "ECDSA_P384"),
        ("rsa2048", "RSA_2048"),
        ("ed25519", "ED25519"),
    ],
)
def test_key_algorithm_names(kind: str, name: str) -> None:
    assert key_algorithm_name(cached_key(kind).public_key()) == name  # type: ignore[arg-type]


def test_key_algorithm_p521() -> None:
    key = ec.generate_private_key(ec.SECP521R1())
    assert key_algorithm_name(key.public_key()) == "ECDSA_P521"


def test_bad_chain_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        certificate_info("not a certificate")
