"""Every bad upload is refused with its own reason code, the right field, and a useful message."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certbroker.errors import InvalidArgument
from certbroker.x509 import MAX_INPUT_BYTES, CustomCertificateValidator, Reason
from tests.pki import (
    NOW,
    Issued,
    TestPKI,
    cached_key,
    make_ca,
    make_leaf,
    pem_bundle,
    pkcs7_bundle,
)

DOMAIN = "www.example.com"


def refused(
    validator: CustomCertificateValidator,
    certificate: bytes,
    key: bytes,
    *,
    domain: str = DOMAIN,
    now: object = NOW,
) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validator.validate(domain, certificate, key, now)  # type: ignore[arg-type]
    error = caught.value
    assert len(error.violations) == 1
    assert error.violations[0].description
    return error


def check(error: InvalidArgument, reason: Reason, field: str, *fragments: str) -> None:
    assert error.reason == reason.value, error.message
    assert error.violations[0].field == field
    for fragment in fragments:
        assert fragment in error.violations[0].description, error.violations[0].description


# -- input shape ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"hello, this is my certificate", "neither PEM"),
        (b"\x00\x01\x02binary", "neither PEM"),
        (b"\x30\x03\x02\x01\x00", "PKCS#12"),
        (b"-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n", "found: FOO"),
    ],
)
def test_not_a_certificate(
    validator: CustomCertificateValidator, leaf: Issued, data: bytes, fragment: str
) -> None:
    check(
        refused(validator, data, leaf.key_pem()),
        Reason.CERT_NOT_PEM_OR_DER,
        "certificate",
        fragment,
    )


def test_private_key_in_certificate_field(
    validator: CustomCertificateValidator, leaf: Issued
) -> None:
    error = refused(validator, leaf.key_pem(), leaf.key_pem())
    check(error, Reason.CERT_NOT_PEM_OR_DER, "certificate", "private key")


def test_csr_in_certificate_field(validator: CustomCertificateValidator, leaf: Issued) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(leaf.cert.subject)
        .sign(leaf.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    data = csr.public_bytes(serialization.Encoding.PEM)
    check(
        refused(validator, data, leaf.key_pem()), Reason.CERT_NOT_PEM_OR_DER, "certificate", "CSR"
    )


def test_begin_without_end(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    bundle = pki.bundle(leaf)
    cut = bundle[: bundle.rindex(b"-----END")]
    error = refused(validator, cut, leaf.key_pem())
    check(
        error, Reason.CERT_TRUNCATED, "certificate", "PEM block 3", "no '-----END CERTIFICATE-----'"
    )


def test_begin_without_end_before_next_block(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    first = leaf.pem
    cut = first[: first.index(b"-----END")]
    error = refused(validator, cut + pki.int2.pem, leaf.key_pem())
    check(error, Reason.CERT_TRUNCATED, "certificate", "PEM block 1")


def test_bad_base64(validator: CustomCertificateValidator, leaf: Issued) -> None:
    lines = leaf.pem.splitlines(keepends=True)
    lines[2] = lines[2][:10] + b"*" + lines[2][11:]  # as if a word processor touched it
    check(
        refused(validator, b"".join(lines), leaf.key_pem()),
        Reason.CERT_TRUNCATED,
        "certificate",
        "base64",
    )


def test_base64_valid_but_cut_at_line_boundary(
    validator: CustomCertificateValidator, leaf: Issued
) -> None:
    lines = leaf.pem.splitlines(keepends=True)
    shortened = b"".join(lines[:3] + lines[-1:])  # whole 64-char lines: still valid base64
    check(
        refused(validator, shortened, leaf.key_pem()),
        Reason.CERT_TRUNCATED,
        "certificate",
        "truncated",
    )


def test_truncated_der(validator: CustomCertificateValidator, leaf: Issued) -> None:
    check(refused(validator, leaf.der[:-40], leaf.key_pem()), Reason.CERT_TRUNCATED, "certificate")


def test_truncated_p7b_der(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    data = pkcs7_bundle([leaf, pki.int2], "der")[:-30]
    check(refused(validator, data, leaf.key_pem()), Reason.CERT_TRUNCATED, "certificate")


def test_pem_of_garbage(validator: CustomCertificateValidator, leaf: Issued) -> None:
    body = base64.encodebytes(b"\x30\x05" + b"\x01" * 5)
    data = b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"
    check(
        refused(validator, data, leaf.key_pem()),
        Reason.CERT_MALFORMED,
        "certificate",
        "PEM block 1",
    )


@pytest.mark.parametrize("field", ["certificate", "private_key"])
def test_input_too_large(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued, field: str
) -> None:
    big = b"x" * (MAX_INPUT_BYTES + 1)
    cert, key = (big, leaf.key_pem()) if field == "certificate" else (pki.bundle(leaf), big)
    check(refused(validator, cert, key), Reason.INPUT_TOO_LARGE, field, "65536")


# -- choosing the leaf ------------------------------------------------------------------


def test_two_leaves(validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued) -> None:
    second = pki.leaf("other.example.com", key=cached_key("p256", 20))
    data = pem_bundle([leaf, second, pki.int2, pki.int1])
    error = refused(validator, data, leaf.key_pem())
    check(
        error,
        Reason.CERT_MULTIPLE_LEAVES,
        "certificate",
        "2 server certificates",
        "other.example.com",
    )


def test_many_leaves_are_listed_up_to_three_with_their_first_sans(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    others = [
        pki.leaf(*(f"h{n}-{i}.example.net" for i in range(50)), key=cached_key("p256", 20 + n))
        for n in range(4)
    ]
    error = refused(validator, pem_bundle([leaf, *others, pki.int2, pki.int1]), leaf.key_pem())
    check(error, Reason.CERT_MULTIPLE_LEAVES, "certificate", "5 server certificates")
    description = error.violations[0].description
    assert "h0-4.example.net and 45 more" in description
    assert "h2-0.example.net" not in description  # only the first three leaves are named
    assert description.count(" and 2 more. Upload one server certificate") == 1


def test_only_intermediates(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    error = refused(validator, pem_bundle([pki.int1, pki.int2]), leaf.key_pem())
    check(error, Reason.CERT_LEAF_IS_CA, "certificate", "Intermediate CA 2", "CA:TRUE")


def test_ca_certificate_as_leaf(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    ca_leaf = pki.leaf(DOMAIN, ca=True)
    error = refused(validator, pki.bundle(ca_leaf), ca_leaf.key_pem())
    check(error, Reason.CERT_LEAF_IS_CA, "certificate", DOMAIN)


def test_no_leaf_in_a_cycle(validator: CustomCertificateValidator, leaf: Issued) -> None:
    kx, ky = cached_key("p256", 30), cached_key("p256", 31)
    y_root = make_ca("Y", ky)
    x_root = make_ca("X", kx)
    x_by_y = make_ca("X", kx, y_root)
    y_by_x = make_ca("Y", ky, x_root)
    error = refused(validator, pem_bundle([x_by_y, y_by_x]), leaf.key_pem())
    check(error, Reason.CERT_NO_LEAF, "certificate")


# -- the key ----------------------------------------------------------------------------


def test_key_mismatch(validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued) -> None:
    other = Issued(leaf.cert, cached_key("p256", 40))
    check(
        refused(validator, pki.bundle(leaf), other.key_pem()),
        Reason.KEY_MISMATCH,
        "private_key",
        "CSR",
    )


def test_key_of_other_algorithm(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    other = Issued(leaf.cert, cached_key("rsa2048"))
    check(
        refused(validator, pki.bundle(leaf), other.key_der("traditional")),
        Reason.KEY_MISMATCH,
        "private_key",
    )


@pytest.mark.parametrize("form", ["pkcs8-pem", "traditional-pem", "pkcs8-der"])
@pytest.mark.parametrize("kind", ["p256", "rsa2048"])
def test_encrypted_key(
    validator: CustomCertificateValidator, pki: TestPKI, form: str, kind: str
) -> None:
    leaf = pki.leaf(DOMAIN, key=kind)  # type: ignore[arg-type]
    if form == "pkcs8-pem":
        key = leaf.key_pem("pkcs8", password=b"secret")
    elif form == "traditional-pem":
        key = leaf.key_pem("traditional", password=b"secret")
    else:
        key = leaf.key_der("pkcs8", password=b"secret")
    error = refused(validator, pki.bundle(leaf), key)
    check(
        error,
        Reason.KEY_ENCRYPTED,
        "private_key",
        "decrypt",
        "openssl pkey -in app.key -out app-decrypted.key",
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"not a key", "neither PEM"),
        (b"\x30\x03\x02\x01\x00", "not a valid private key"),
        (b"-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n", "not a valid"),
    ],
)
def test_invalid_key(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued, data: bytes, fragment: str
) -> None:
    check(refused(validator, pki.bundle(leaf), data), Reason.KEY_INVALID, "private_key", fragment)


def test_public_key_instead_of_private(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    public = leaf.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    check(
        refused(validator, pki.bundle(leaf), public),
        Reason.KEY_INVALID,
        "private_key",
        "public key",
    )


def test_certificate_in_key_field(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    check(
        refused(validator, pki.bundle(leaf), leaf.pem),
        Reason.KEY_INVALID,
        "private_key",
        "certificate",
    )


def test_two_keys(validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued) -> None:
    keys = leaf.key_pem() + Issued(leaf.cert, cached_key("p256", 41)).key_pem()
    check(
        refused(validator, pki.bundle(leaf), keys),
        Reason.KEY_INVALID,
        "private_key",
        "2 private keys",
    )


def test_truncated_key(validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued) -> None:
    key = leaf.key_pem()
    check(
        refused(validator, pki.bundle(leaf), key[: key.index(b"-----END")]),
        Reason.KEY_TRUNCATED,
        "private_key",
    )


def test_truncated_der_key(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    check(
        refused(validator, pki.bundle(leaf), leaf.key_der()[:-10]),
        Reason.KEY_TRUNCATED,
        "private_key",
    )


def test_ed25519_key_unsupported(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    leaf = pki.leaf(DOMAIN, key="ed25519")
    check(
        refused(validator, pki.bundle(leaf), leaf.key_pem()),
        Reason.KEY_UNSUPPORTED,
        "private_key",
        "Ed25519",
    )


def test_damaged_rsa_key(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    good = cached_key("rsa2048")
    assert isinstance(good, rsa.RSAPrivateKey)
    n = good.private_numbers()
    bad = rsa.RSAPrivateNumbers(
        n.p, n.q, n.d, n.dmp1 ^ 2, n.dmq1, n.iqmp, n.public_numbers
    ).private_key(unsafe_skip_rsa_key_validation=True)
    leaf = pki.leaf(DOMAIN, key=good)
    damaged = Issued(leaf.cert, bad).key_pem("traditional")
    check(
        refused(validator, pki.bundle(leaf), damaged), Reason.KEY_INVALID, "private_key", "damaged"
    )


# -- names and dates --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sans", "domain"),
    [
        (("www.example.com",), "api.example.com"),
        (("*.example.com",), "example.com"),
        (("*.example.com",), "a.b.example.com"),
        (("a.example.com",), "*.example.com"),
        (("*.a.example.com",), "*.example.com"),
        (("*.example.com",), "*.b.example.com"),
    ],
)
def test_name_mismatch(
    validator: CustomCertificateValidator, pki: TestPKI, sans: tuple[str, ...], domain: str
) -> None:
    leaf = pki.leaf(*sans)
    error = refused(validator, pki.bundle(leaf), leaf.key_pem(), domain=domain)
    check(error, Reason.CERT_NAME_MISMATCH, "certificate", f"does not cover {domain}", sans[0])


def test_no_san(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    leaf = pki.leaf(DOMAIN, with_san=False)
    error = refused(validator, pki.bundle(leaf), leaf.key_pem())
    check(error, Reason.CERT_NAME_MISMATCH, "certificate", "Common Name")


def test_name_mismatch_names_five_sans_and_counts_the_rest(
    validator: CustomCertificateValidator, pki: TestPKI
) -> None:
    sans = [f"host{i:04}.example.net" for i in range(1200)]
    leaf = pki.leaf(*sans)
    error = refused(validator, pki.bundle(leaf), leaf.key_pem())
    check(
        error,
        Reason.CERT_NAME_MISMATCH,
        "certificate",
        f"it covers {', '.join(sans[:5])} and 1,195 more. Upload a certificate that names",
    )
    assert sans[5] not in error.violations[0].description


@pytest.mark.parametrize(
    "domain", ["", "WWW.example.com", "www.example.com.", "bad_name.example.com"]
)
def test_bad_domain(validator: CustomCertificateValidator, pki: TestPKI, domain: str) -> None:
    leaf = pki.leaf(domain.lower().rstrip(".") or "x.example.com")
    error = refused(validator, pki.bundle(leaf), leaf.key_pem(), domain=domain)
    check(error, Reason.DOMAIN_INVALID, "domain")


def test_expired(validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued) -> None:
    later = leaf.cert.not_valid_after_utc + timedelta(seconds=1)
    error = refused(validator, pki.bundle(leaf), leaf.key_pem(), now=later)
    check(error, Reason.CERT_EXPIRED, "certificate", "expired on 2026-07-31 12:00:00 UTC", "renew")


def test_not_yet_valid(validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued) -> None:
    earlier = leaf.cert.not_valid_before_utc - timedelta(seconds=1)
    error = refused(validator, pki.bundle(leaf), leaf.key_pem(), now=earlier)
    check(
        error, Reason.CERT_NOT_YET_VALID, "certificate", "not valid before 2026-05-02 12:00:00 UTC"
    )


def test_expired_intermediate(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    old = make_ca(
        "Old Intermediate", cached_key("p256", 50), pki.int1, not_after=NOW - timedelta(days=1)
    )
    leaf = make_leaf(old, [DOMAIN], cached_key("p256", 9), not_after=NOW + timedelta(days=10))
    error = refused(validator, pem_bundle([leaf, old, pki.int1]), leaf.key_pem())
    check(error, Reason.CERT_EXPIRED, "certificate", "intermediate", "Old Intermediate")


def test_naive_now_is_a_programming_error(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    with pytest.raises(ValueError, match="aware"):
        validator.validate(DOMAIN, pki.bundle(leaf), leaf.key_pem(), NOW.replace(tzinfo=None))


# -- the chain --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "missing_issuer"),
    [
        ((), "Intermediate CA 2"),
        (("int1",), "Intermediate CA 2"),
        (("int2",), "Intermediate CA 1"),
        (("int2", "root"), "Intermediate CA 1"),
    ],
)
def test_intermediate_missing(
    validator: CustomCertificateValidator,
    pki: TestPKI,
    leaf: Issued,
    parts: tuple[str, ...],
    missing_issuer: str,
) -> None:
    items = [leaf, *(getattr(pki, p) for p in parts)]
    error = refused(validator, pem_bundle(items), leaf.key_pem())
    check(error, Reason.CHAIN_INTERMEDIATE_MISSING, "certificate", missing_issuer, "intermediate")


def test_untrusted_root(validator: CustomCertificateValidator, other_pki: TestPKI) -> None:
    leaf = other_pki.leaf(DOMAIN)
    error = refused(validator, other_pki.bundle(leaf, root=True), leaf.key_pem())
    check(error, Reason.CHAIN_UNTRUSTED, "certificate", "Other Root CA", "not a trusted")


def test_untrusted_without_root_says_missing_or_untrusted(
    validator: CustomCertificateValidator, other_pki: TestPKI
) -> None:
    leaf = other_pki.leaf(DOMAIN)
    error = refused(validator, other_pki.bundle(leaf), leaf.key_pem())
    check(
        error,
        Reason.CHAIN_INTERMEDIATE_MISSING,
        "certificate",
        "Other Root CA",
        "root is not trusted",
    )


def test_self_signed_leaf(validator: CustomCertificateValidator) -> None:
    key = cached_key("p256", 60)
    fake_issuer = Issued(make_ca(DOMAIN, key).cert, key)  # only lends its subject and key
    leaf = make_leaf(fake_issuer, [DOMAIN], key, common_name=DOMAIN)
    assert leaf.cert.subject == leaf.cert.issuer
    error = refused(validator, leaf.pem, leaf.key_pem())
    check(error, Reason.CHAIN_UNTRUSTED, "certificate", "self-signed")


def test_broken_signature(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    der = bytearray(leaf.der)
    der[-5] ^= 0x01  # inside the ECDSA signature's integers
    broken = x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)
    error = refused(validator, broken + pki.int2.pem + pki.int1.pem, leaf.key_pem())
    check(error, Reason.CHAIN_INVALID, "certificate")


# -- strength ---------------------------------------------------------------------------


def test_rsa_1024_leaf(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    leaf = pki.leaf(DOMAIN, key="rsa1024")
    error = refused(validator, pki.bundle(leaf), leaf.key_pem())
    check(error, Reason.KEY_TOO_WEAK, "certificate", "1024-bit", "2048")


def test_rsa_1024_intermediate(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    weak = make_ca("Weak Intermediate", cached_key("rsa1024"), pki.int1)
    leaf = pki.leaf(DOMAIN, issuer=weak)
    error = refused(validator, pem_bundle([leaf, weak, pki.int1]), leaf.key_pem())
    check(error, Reason.KEY_TOO_WEAK, "certificate", "Weak Intermediate")


def test_sha1_leaf(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    leaf, intermediates = pki.sha1_leaf(DOMAIN)
    error = refused(validator, pem_bundle([leaf, *intermediates]), leaf.key_pem())
    check(error, Reason.CERT_SHA1_SIGNATURE, "certificate", "SHA-1", DOMAIN)


def test_sha1_intermediate(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    leaf, intermediates = pki.sha1_intermediate_leaf(DOMAIN)
    error = refused(validator, pem_bundle([leaf, *intermediates]), leaf.key_pem())
    check(error, Reason.CERT_SHA1_SIGNATURE, "certificate", "SHA-1", "SHA1 Intermediate")


def test_chain_too_long(validator: CustomCertificateValidator, pki: TestPKI) -> None:
    cas = [pki.int1]
    for i in range(9):
        cas.append(make_ca(f"Deep {i}", cached_key("p256", 70 + i % 2), cas[-1]))
    leaf = pki.leaf(DOMAIN, issuer=cas[-1])
    error = refused(validator, pem_bundle([leaf, *cas[::-1]]), leaf.key_pem())
    check(error, Reason.CHAIN_INVALID, "certificate", "longer than 8")


def test_dates_are_reported_in_utc(
    validator: CustomCertificateValidator, pki: TestPKI, leaf: Issued
) -> None:
    from datetime import timezone

    paris = timezone(timedelta(hours=2))
    later = (leaf.cert.not_valid_after_utc + timedelta(days=1)).astimezone(paris)
    error = refused(validator, pki.bundle(leaf), leaf.key_pem(), now=later)
    check(error, Reason.CERT_EXPIRED, "certificate", "(now is 2026-08-01 12:00:00 UTC)")
