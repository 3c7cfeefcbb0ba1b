"""Intake on its own, and with files made by the openssl commands the seed tells people to run."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from certbroker.errors import InvalidArgument
from certbroker.x509 import (
    CustomCertificateValidator,
    Reason,
    parse_certificates,
    parse_private_key,
)
from tests.pki import NOW, Issued, TestPKI, pem_bundle

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_parse_keeps_input_order_and_drops_duplicates(pki: TestPKI, leaf: Issued) -> None:
    certs = parse_certificates(pem_bundle([pki.int1, leaf, pki.int1, pki.root]))
    assert certs == [pki.int1.cert, leaf.cert, pki.root.cert]


def test_x509_certificate_label(leaf: Issued) -> None:
    pem = leaf.pem.replace(b"BEGIN CERTIFICATE", b"BEGIN X509 CERTIFICATE").replace(
        b"END CERTIFICATE", b"END X509 CERTIFICATE"
    )
    assert parse_certificates(pem) == [leaf.cert]


def test_mismatched_end_label_is_truncation(leaf: Issued) -> None:
    pem = leaf.pem.replace(b"END CERTIFICATE", b"END X509 CERTIFICATE")
    with pytest.raises(InvalidArgument) as caught:
        parse_certificates(pem)
    assert caught.value.reason == Reason.CERT_TRUNCATED


def test_parse_private_key_rejects_huge_rsa_quickly() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_private_key(b"\x30\x82\xff\xff" + b"\x00" * 100)
    assert caught.value.reason == Reason.KEY_TRUNCATED


@pytest.fixture(scope="module")
def openssl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI missing")
    return tmp_path_factory.mktemp("openssl")


def sign_csr(pki: TestPKI, csr_pem: bytes, names: list[str]) -> x509.Certificate:
    """Play the CA of the seed's step 2."""
    csr = x509.load_pem_x509_csr(csr_pem)
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(pki.int2.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.int2.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(pki.int2.key, hashes.SHA256())  # type: ignore[arg-type]
    )


@needs_openssl
def test_seed_walkthrough_rsa(
    openssl_dir: Path, pki: TestPKI, validator: CustomCertificateValidator
) -> None:
    """The seed: `openssl req -new -newkey rsa:2048 -sha256 -nodes ...`, sign, upload."""
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-sha256", "-nodes",
        "-keyout", "app.key", "-out", "app.csr", "-subj", "/C=FR/CN=www.example.com",
        cwd=openssl_dir,
    )  # fmt: skip
    cert = sign_csr(pki, (openssl_dir / "app.csr").read_bytes(), ["www.example.com"])
    crt = pem_bundle([Issued(cert, pki.int2.key), pki.int2, pki.int1])
    result = validator.validate("www.example.com", crt, (openssl_dir / "app.key").read_bytes(), NOW)
    assert result.info.key_algorithm == "RSA_2048"
    # The DER conversion the seed mentions (`openssl x509 -inform DER ...`), the other way round:
    (openssl_dir / "app.pem").write_bytes(crt)
    openssl("x509", "-in", "app.pem", "-outform", "DER", "-out", "app.der", cwd=openssl_dir)
    der = (openssl_dir / "app.der").read_bytes()
    assert parse_certificates(der) == [cert]


@needs_openssl
def test_openssl_ecparam_key_and_trusted_certificate(
    openssl_dir: Path, pki: TestPKI, validator: CustomCertificateValidator
) -> None:
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-out", "ec.key", cwd=openssl_dir)
    openssl(
        "req", "-new", "-key", "ec.key", "-out", "ec.csr", "-subj", "/CN=api.example.com",
        cwd=openssl_dir,
    )  # fmt: skip
    cert = sign_csr(pki, (openssl_dir / "ec.csr").read_bytes(), ["api.example.com"])
    (openssl_dir / "ec.crt").write_bytes(Issued(cert, pki.int2.key).pem)
    openssl(
        "x509",
        "-in",
        "ec.crt",
        "-trustout",
        "-addtrust",
        "serverAuth",
        "-out",
        "ec-trusted.crt",
        cwd=openssl_dir,
    )
    trusted = (openssl_dir / "ec-trusted.crt").read_bytes()
    assert b"BEGIN TRUSTED CERTIFICATE" in trusted
    key = (openssl_dir / "ec.key").read_bytes()
    assert b"EC PARAMETERS" in key
    result = validator.validate("api.example.com", trusted + pki.int2.pem + pki.int1.pem, key, NOW)
    assert result.info.key_algorithm == "ECDSA_P256"


@needs_openssl
def test_openssl_encrypted_key_names_the_command(openssl_dir: Path) -> None:
    openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-aes256", "-pass", "pass:secret", "-out", "enc.key",
        cwd=openssl_dir,
    )  # fmt: skip
    with pytest.raises(InvalidArgument) as caught:
        parse_private_key((openssl_dir / "enc.key").read_bytes())
    assert caught.value.reason == Reason.KEY_ENCRYPTED
    assert "openssl pkey -in app.key -out app-decrypted.key" in caught.value.message
