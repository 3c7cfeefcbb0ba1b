"""A small, fast test PKI: a private root, two levels of intermediates, and leaves.

Why this exists: every test that touches certificates (x509 intake, the upload use
case, the watch stream that ships chains to routers) needs realistic, *policy
compliant* chains — cryptography's verifier applies the CA/Browser Forum profile,
so a hand-rolled certificate missing AKI/SKI/EKU fails for the wrong reason.

Speed: key generation dominates, so keys come from a small cache (ECDSA P-256
wherever the algorithm does not matter; one RSA-2048 and one RSA-1024 key for the
whole session). Building a certificate costs ~100 µs.

Typical use::

    pki = TestPKI()
    leaf = pki.leaf("www.example.com")
    bundle = pki.bundle(leaf)                       # leaf, int2, int1 as PEM
    validator = CustomCertificateValidator([pki.root.cert])
    validator.validate("www.example.com", bundle, leaf.key_pem(), NOW)
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The instant every default certificate is valid at (tests pass it as ``now``).
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
KeyKind = Literal["p256", "p384", "rsa2048", "rsa1024", "ed25519"]
KeyFormat = Literal["pkcs8", "traditional"]

_serials = itertools.count(0x1000)


@functools.cache
def cached_key(kind: KeyKind = "p256", slot: int = 0) -> PrivateKey:
    """A key per (kind, slot), made once per test session.

    Use distinct slots where two certificates must have different keys (a key
    mismatch test, or a CA and its subordinate).
    """
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the weak-key case)
    return ed25519.Ed25519PrivateKey.generate()


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, and its encodings."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    def key_pem(self, fmt: KeyFormat = "pkcs8", password: bytes | None = None) -> bytes:
        """The key as PEM; ``traditional`` is PKCS#1 for RSA and SEC1 for EC."""
        return self._key_bytes(serialization.Encoding.PEM, fmt, password)

    def key_der(self, fmt: KeyFormat = "pkcs8", password: bytes | None = None) -> bytes:
        return self._key_bytes(serialization.Encoding.DER, fmt, password)

    def _key_bytes(
        self, encoding: serialization.Encoding, fmt: KeyFormat, password: bytes | None
    ) -> bytes:
        private_format = (
            serialization.PrivateFormat.PKCS8
            if fmt == "pkcs8"
            else serialization.PrivateFormat.TraditionalOpenSSL
        )
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(encoding, private_format, encryption)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certbroker tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _hash_for(
    key: PrivateKey, sign_hash: hashes.HashAlgorithm | None
) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    return sign_hash or hashes.SHA256()


def make_ca(
    common_name: str,
    key: PrivateKey,
    issuer: Issued | None = None,
    *,
    not_before: datetime = NOW - timedelta(days=365),
    not_after: datetime = NOW + timedelta(days=3650),
    sign_hash: hashes.HashAlgorithm | None = None,
) -> Issued:
    """A CA certificate; self-signed (a root) when ``issuer`` is None."""
    subject = _name(common_name)
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(next(_serials))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    cert = builder.sign(signer_key, _hash_for(signer_key, sign_hash))
    return Issued(cert, key)


def make_leaf(
    issuer: Issued,
    names: Sequence[str],
    key: PrivateKey,
    *,
    not_before: datetime = NOW - timedelta(days=30),
    not_after: datetime = NOW + timedelta(days=60),
    sign_hash: hashes.HashAlgorithm | None = None,
    common_name: str | None = None,
    ca: bool = False,
    with_san: bool = True,
) -> Issued:
    """An end-entity (server) certificate; ``ca=True`` makes the 'CA uploaded as leaf' case."""
    cn = common_name if common_name is not None else (names[0] if names else "no-name")
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(next(_serials))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if with_san and names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    cert = builder.sign(issuer.key, _hash_for(issuer.key, sign_hash))
    return Issued(cert, key)


class TestPKI:
    """Root → intermediate 1 → intermediate 2 → leaves, all valid at :data:`NOW`.

    ``prefix`` keeps the subjects of two PKIs in one test distinct (an "other"
    root that the validator does not trust).
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, prefix: str = "Test", key_slot: int = 0, root_key: KeyKind = "p256") -> None:
        base = key_slot * 10
        self.prefix = prefix
        self.root = make_ca(f"{prefix} Root CA", cached_key(root_key, base))
        self.int1 = make_ca(f"{prefix} Intermediate CA 1", cached_key("p256", base + 1), self.root)
        self.int2 = make_ca(f"{prefix} Intermediate CA 2", cached_key("p256", base + 2), self.int1)

    @property
    def intermediates(self) -> list[Issued]:
        """In signing order from the leaf up: int2 (signs leaves), then int1."""
        return [self.int2, self.int1]

    def leaf(
        self,
        *names: str,
        key: KeyKind | PrivateKey = "p256",
        issuer: Issued | None = None,
        **kwargs: object,
    ) -> Issued:
        """A leaf for ``names`` issued by int2 (default), with a cached key.

        ``key`` is a kind ("rsa2048", "rsa1024", ...) or a key object. Other
        keyword arguments go to :func:`make_leaf` (``not_after``, ``sign_hash``,
        ``ca``, ``with_san``, ...).
        """
        private = cached_key(key, 9) if isinstance(key, str) else key
        return make_leaf(issuer or self.int2, list(names), private, **kwargs)  # type: ignore[arg-type]

    @cached_property
    def rsa_int(self) -> Issued:
        """An RSA-2048 intermediate under int1: the issuer for SHA-1 signed certificates."""
        return make_ca(f"{self.prefix} RSA Intermediate CA", cached_key("rsa2048", 3), self.int1)

    def sha1_leaf(self, *names: str) -> tuple[Issued, list[Issued]]:
        """A leaf signed with SHA-1 by :attr:`rsa_int`, and its intermediates."""
        leaf = resign_sha1(self.leaf(*names, issuer=self.rsa_int), self.rsa_int)
        return leaf, [self.rsa_int, self.int1]

    def sha1_intermediate_leaf(self, *names: str) -> tuple[Issued, list[Issued]]:
        """A SHA-256 leaf under an intermediate that :attr:`rsa_int` signed with SHA-1."""
        weak = resign_sha1(
            make_ca(f"{self.prefix} SHA1 Intermediate CA", cached_key("p256", 4), self.rsa_int),
            self.rsa_int,
        )
        return self.leaf(*names, issuer=weak), [weak, self.rsa_int, self.int1]

    def chain(self, leaf: Issued, *, root: bool = False) -> list[Issued]:
        """Leaf first, then intermediates in signing order (the expected output order)."""
        out = [leaf, *self.intermediates]
        return [*out, self.root] if root else out

    def bundle(
        self,
        leaf: Issued,
        *,
        root: bool = False,
        order: Iterable[int] | None = None,
        crlf: bool = False,
        junk: bool = False,
    ) -> bytes:
        """The chain as one PEM bundle.

        ``order`` permutes the chain (indexes into :meth:`chain`); ``junk`` puts
        openssl-style text between the blocks; ``crlf`` uses Windows line ends.
        """
        items = self.chain(leaf, root=root)
        if order is not None:
            items = [items[i] for i in order]
        return pem_bundle(items, crlf=crlf, junk=junk)


def pem_bundle(items: Sequence[Issued], *, crlf: bool = False, junk: bool = False) -> bytes:
    """Concatenate PEM blocks, optionally with stray text and CRLF line ends."""
    parts: list[bytes] = []
    for item in items:
        if junk:
            parts.append(f"subject={item.subject}\nissuer = something\n\n".encode())
        parts.append(item.pem)
    data = b"".join(parts)
    if junk:
        data += b"trailing notes\n"
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    return data


_SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")
_SHA1_WITH_RSA = bytes.fromhex("06092a864886f70d010105")


def resign_sha1(item: Issued, issuer: Issued) -> Issued:
    """Re-sign a certificate with SHA-1, which cryptography 50 refuses to do.

    Swaps the sha256WithRSAEncryption OID (same length) in both places and replaces
    the signature, which keeps its length for the same RSA issuer key.
    """
    assert isinstance(issuer.key, rsa.RSAPrivateKey), "SHA-1 re-signing needs an RSA issuer"
    der = item.der
    assert der.count(_SHA256_WITH_RSA) == 2, "expected a SHA-256/RSA signed certificate"
    der = der.replace(_SHA256_WITH_RSA, _SHA1_WITH_RSA)
    tbs = x509.load_der_x509_certificate(der).tbs_certificate_bytes
    signature = issuer.key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    assert der.endswith(item.cert.signature) and len(signature) == len(item.cert.signature)
    der = der[: -len(signature)] + signature
    return Issued(x509.load_der_x509_certificate(der), item.key)


def pkcs7_bundle(items: Sequence[Issued], encoding: Literal["pem", "der"] = "pem") -> bytes:
    """A certs-only PKCS#7 (.p7b), as CAs often deliver chains."""
    enc = serialization.Encoding.PEM if encoding == "pem" else serialization.Encoding.DER
    return pkcs7.serialize_certificates([i.cert for i in items], enc)
