"""Keys and CSRs."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbroker.acme.keys import generate_private_key, make_csr
from certbroker.model import KeyAlgorithm


def test_default_is_p256_pkcs8() -> None:
    pem = generate_private_key()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"


def test_rsa_2048() -> None:
    key = serialization.load_pem_private_key(
        generate_private_key(KeyAlgorithm.RSA_2048), password=None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048


def test_csr_names_and_signature() -> None:
    pem = generate_private_key()
    csr = x509.load_pem_x509_csr(make_csr(pem, ["b.example", "A.example", "b.example"]))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["b.example", "a.example"]
    key = serialization.load_pem_private_key(pem, password=None)
    assert csr.public_key() == key.public_key()
