"""Every good form of upload is accepted, and the chain comes out leaf-first, root left out."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbroker.x509 import CustomCertificateValidator, ValidatedBundle
from tests.pki import NOW, Issued, KeyFormat, TestPKI, cached_key, pem_bundle, pkcs7_bundle

DOMAIN = "www.example.com"


def chain_subjects(bundle: ValidatedBundle) -> list[str]:
    certs = x509.load_pem_x509_certificates(bundle.chain_pem.encode())
    return [c.subject.rfc4514_string() for c in certs]


def expected(pki: TestPKI, leaf: Issued) -> list[str]:
    return [leaf.subject, pki.int2.subject, pki.int1.subject]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_every_order_with_root(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued, order: tuple[int, ...]
) -> None:
    result = validator.validate(
        DOMAIN, pki.bundle(leaf, root=True, order=order), leaf.key_pem(), NOW
    )
    assert chain_subjects(result) == expected(pki, leaf)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_every_order_without_root(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued, order: tuple[int, ...]
) -> None:
    result = validator.validate(DOMAIN, pki.bundle(leaf, order=order), leaf.key_pem(), NOW)
    assert chain_subjects(result) == expected(pki, leaf)


@pytest.mark.parametrize(("crlf", "junk"), [(True, False), (False, True), (True, True)])
def test_crlf_and_text_between_blocks(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued, crlf: bool, junk: bool
) -> None:
    data = pki.bundle(leaf, root=True, order=(2, 0, 3, 1), crlf=crlf, junk=junk)
    key = leaf.key_pem()
    if crlf:
        key = key.replace(b"\n", b"\r\n")
    result = validator.validate(DOMAIN, data, key, NOW)
    assert chain_subjects(result) == expected(pki, leaf)


def test_duplicates_and_unrelated_ca_are_dropped(
    validator: CustomCertificateValidator, pki: TestPKI, other_pki: TestPKI, leaf: Issued
) -> None:
    data = pem_bundle([pki.int1, leaf, other_pki.int2, pki.int2, leaf, pki.int1])
    result = validator.validate(DOMAIN, data, leaf.key_pem(), NOW)
    assert chain_subjects(result) == expected(pki, leaf)


def test_der_single_certificate(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    leaf = pki.leaf(DOMAIN, issuer=pki.root)
    result = validator.validate(DOMAIN, leaf.der, leaf.key_der(), NOW)
    assert chain_subjects(result) == [leaf.subject]


def test_der_leaf_with_intermediate_as_trust_anchor(pki: TestPKI, leaf: Issued) -> None:
    """A private CA may hand out its issuing CA as the anchor; the chain is then the leaf alone."""
    validator = CustomCertificateValidator([pki.int2.cert])
    assert chain_subjects(validator.validate(DOMAIN, leaf.der, leaf.key_pem(), NOW)) == [
        leaf.subject
    ]


@pytest.mark.parametrize("encoding", ["pem", "der"])
@pytest.mark.parametrize("with_root", [False, True])
def test_pkcs7(
    validator: CustomCertificateValidator,
    pki: TestPKI,
    leaf: Issued,
    encoding: str,
    with_root: bool,
) -> None:
    items = [pki.int1, leaf, pki.int2] + ([pki.root] if with_root else [])
    data = pkcs7_bundle(items, "pem" if encoding == "pem" else "der")
    result = validator.validate(DOMAIN, data, leaf.key_pem(), NOW)
    assert chain_subjects(result) == expected(pki, leaf)


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa2048"])
@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
@pytest.mark.parametrize("encoding", ["pem", "der"])
def test_key_encodings(
    validator: CustomCertificateValidator,
    pki: TestPKI,
    kind: str,
    fmt: KeyFormat,
    encoding: str,
) -> None:
    leaf = pki.leaf(DOMAIN, key=kind)  # type: ignore[arg-type]
    key = leaf.key_pem(fmt) if encoding == "pem" else leaf.key_der(fmt)
    result = validator.validate(DOMAIN, pki.bundle(leaf), key, NOW)
    assert result.key_pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert (
        result.info.key_algorithm
        == {
            "p256": "ECDSA_P256",
            "p384": "ECDSA_P384",
            "rsa2048": "RSA_2048",
        }[kind]
    )


def test_key_file_with_ec_parameters_and_certificate(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    """`openssl ecparam -genkey` writes EC PARAMETERS first; combined .pem files add the cert."""
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    key = params + leaf.key_pem("traditional") + leaf.pem
    validator.validate(DOMAIN, pki.bundle(leaf), key, NOW)


@pytest.mark.parametrize(
    ("sans", "domain"),
    [
        (("*.example.com",), "a.example.com"),
        (("*.example.com",), "*.example.com"),
        (("example.com", "*.example.com"), "example.com"),
        (("a.example.com", "b.example.com", "c.example.org"), "c.example.org"),
        (("WWW.Example.COM",), "www.example.com"),
    ],
)
def test_name_coverage(
    validator: CustomCertificateValidator, pki: TestPKI, sans: tuple[str, ...], domain: str
) -> None:
    leaf = pki.leaf(*sans)
    result = validator.validate(domain, pki.bundle(leaf), leaf.key_pem(), NOW)
    assert result.info.sans == tuple(s.lower() for s in sans)


def test_validity_edges_are_inclusive(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    for when in (leaf.cert.not_valid_before_utc, leaf.cert.not_valid_after_utc):
        validator.validate(DOMAIN, pki.bundle(leaf), leaf.key_pem(), when)


def test_result_contents(validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued) -> None:
    result = validator.validate(DOMAIN, pki.bundle(leaf, root=True), leaf.key_der(), NOW)
    info = result.info
    assert info.id == 0
    assert info.subject == leaf.subject
    assert info.issuer == pki.int2.subject
    assert info.serial == format(leaf.cert.serial_number, "x")
    assert info.sha256_fingerprint == leaf.cert.fingerprint(hashes.SHA256()).hex()
    assert info.not_before == leaf.cert.not_valid_before_utc
    assert info.not_after.tzinfo is not None
    assert info.chain_pem == result.chain_pem
    assert result.chain_pem.count("BEGIN CERTIFICATE") == 3
    assert "PRIVATE" not in repr(result)
    assert result.key_pem not in repr(result)


def test_rsa_leaf_under_rsa_root(pki: TestPKI) -> None:
    rsa_pki = TestPKI("Rsa", key_slot=2, root_key="rsa2048")
    validator = CustomCertificateValidator([rsa_pki.root.cert, pki.root.cert])
    leaf = rsa_pki.leaf(DOMAIN, key=cached_key("rsa2048", 7))
    result = validator.validate(DOMAIN, rsa_pki.bundle(leaf), leaf.key_pem("traditional"), NOW)
    assert result.info.key_algorithm == "RSA_2048"


def test_from_file(tmp_path: Path, pki: TestPKI, leaf: Issued) -> None:
    path = tmp_path / "roots.pem"
    path.write_bytes(pki.root.pem + TestPKI("Extra", key_slot=3).root.pem)
    validator = CustomCertificateValidator.from_file(str(path))
    validator.validate(DOMAIN, pki.bundle(leaf), leaf.key_pem(), NOW)


def test_from_file_system_store_loads() -> None:
    CustomCertificateValidator.from_file(None)
