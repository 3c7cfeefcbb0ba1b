"""Accept a custom certificate only if browsers would: leaf, key, name, dates, chain.

Why this shape: the validator is built once with the trust roots (building the
``Store`` is the costly part), then ``validate`` runs per upload in well under
2 ms. The chain itself is built and checked by ``cryptography.x509.verification``
(the CA/Browser Forum profile), never by hand. Around it we run our own cheap
checks *first* — leaf selection, key match, name coverage, dates, key strength,
SHA-1 — because the verifier's messages ("candidates exhausted") do not tell a
person what to do, and because it accepts some things we refuse (RSA-1024).
When the verifier still refuses, we explain the failure from the bundle's
names: an intermediate is missing, or the chain ends at an untrusted root.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Self

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certbroker.bounds import listed
from certbroker.model import CertificateInfo
from certbroker.x509.info import dns_sans, info_for_leaf
from certbroker.x509.intake import (
    CERT_FIELD,
    DOMAIN_FIELD,
    KEY_FIELD,
    PARSE_ERRORS,
    SUPPORTED_CURVES,
    Reason,
    key_to_pkcs8_pem,
    parse_certificates,
    parse_private_key,
    refuse,
)

SYSTEM_CA_FILE: Final = "/etc/ssl/certs/ca-certificates.crt"
MIN_RSA_BITS: Final = 2048
#: Longer paths than this are not built from an upload (the verifier's own limit is similar).
MAX_PATH: Final = 8
#: Stand-in label for checking a wildcard domain with the verifier, which only takes
#: concrete names. Our own SAN check has already required the exact ``*.`` SAN.
_WILDCARD_PROBE: Final = "certbroker-wildcard-probe"
#: Signature hashes browsers refuse, with the names people know them by.
_WEAK_HASHES: Final = {"sha1": "SHA-1", "md5": "MD5"}


class TrustStoreError(ValueError):
    """The trust-root file is missing, unreadable or holds no certificates."""


@dataclass(frozen=True)
class ValidatedBundle:
    """What an accepted upload becomes: the chain to serve and the key to seal.

    ``chain_pem`` is leaf first, then intermediates in signing order, without the
    root (clients have it; sending it wastes bytes on every handshake).
    """

    chain_pem: str
    key_pem: str = field(repr=False)
    info: CertificateInfo


@dataclass(frozen=True)
class _Facts:
    """The parts of a certificate the path reasoning needs, read once."""

    cert: x509.Certificate
    subject: x509.Name
    issuer: x509.Name
    is_ca: bool
    ski: bytes | None
    aki: bytes | None
    public_key: CertificatePublicKeyTypes

    @classmethod
    def of(cls, cert: x509.Certificate) -> _Facts:
        extensions = cert.extensions
        is_ca = False
        ski: bytes | None = None
        aki: bytes | None = None
        for extension in extensions:
            value = extension.value
            if isinstance(value, x509.BasicConstraints):
                is_ca = value.ca
            elif isinstance(value, x509.SubjectKeyIdentifier):
                ski = value.digest
            elif isinstance(value, x509.AuthorityKeyIdentifier):
                aki = value.key_identifier
        return cls(cert, cert.subject, cert.issuer, is_ca, ski, aki, cert.public_key())

    @property
    def label(self) -> str:
        return f"'{self.subject.rfc4514_string()}'"

    @property
    def self_issued(self) -> bool:
        return self.subject == self.issuer

    def issued(self, child: _Facts) -> bool:
        """Whether ``self`` looks like the issuer of ``child`` (names, and key ids when both exist).

        Names only order and explain; signatures are checked by the verifier.
        """
        if child is self or child.issuer != self.subject:
            return False
        return child.aki is None or self.ski is None or child.aki == self.ski


def _signature_hash_name(cert: x509.Certificate) -> str | None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "unsupported"
    return None if algorithm is None else algorithm.name


def _fmt(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


class CustomCertificateValidator:
    """Validates uploads against a fixed set of trust roots (build once, use many times)."""

    def __init__(self, trust_roots: Sequence[x509.Certificate]) -> None:
        if not trust_roots:
            raise TrustStoreError("no trust roots given")
        self._store = Store(list(trust_roots))
        self._roots = [_Facts.of(root) for root in trust_roots]

    @classmethod
    def from_file(cls, path: str | None) -> Self:
        """Trust the PEM roots in ``path``; None means the system store (or certifi's)."""
        if path is None:
            path = SYSTEM_CA_FILE
            if not os.path.exists(path):
                import certifi  # only needed where the OS has no CA bundle

                path = certifi.where()
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise TrustStoreError(f"cannot read trust roots from {path}: {error}") from None
        # System bundles hold a few old roots with non-positive serials; cryptography
        # warns about each one on every start, which is noise for an operator.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            try:
                roots = x509.load_pem_x509_certificates(data)
            except ValueError as error:
                raise TrustStoreError(f"{path} is not a PEM certificate bundle: {error}") from None
            return cls(roots)

    def validate(
        self, domain: str, certificate: bytes, private_key: bytes, now: datetime
    ) -> ValidatedBundle:
        """Check an upload for ``domain`` (normalised: lowercase A-labels) at ``now`` (aware).

        Raises ``InvalidArgument`` with one field violation and a ``Reason`` code.
        """
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        now = now.astimezone(UTC)  # messages print UTC
        certs = parse_certificates(certificate)
        key = parse_private_key(private_key)
        facts = [_Facts.of(cert) for cert in certs]
        leaf = self._choose_leaf(facts)
        self._check_key(leaf, key)
        self._check_name(leaf, domain)
        self._check_dates(leaf, now, "the certificate")
        self._check_strength(leaf, "the certificate")
        chain = self._verify(domain, leaf, facts, now)
        chain_pem = "".join(
            cert.public_bytes(serialization.Encoding.PEM).decode("ascii") for cert in chain
        )
        return ValidatedBundle(
            chain_pem=chain_pem,
            key_pem=key_to_pkcs8_pem(key),
            info=info_for_leaf(leaf.cert, chain_pem, 0),
        )

    # -- the steps, in the order a person should fix things ---------------------------

    @staticmethod
    def _choose_leaf(facts: list[_Facts]) -> _Facts:
        """The leaf is the one non-CA certificate that issued nothing else in the bundle."""
        signers = {id(a) for a in facts for b in facts if a.issued(b)}
        unsigned = [f for f in facts if id(f) not in signers]
        leaves = [f for f in unsigned if not f.is_ca]
        if len(leaves) == 1:
            return leaves[0]
        if len(leaves) > 1:
            described = listed(
                [f"{f.label} ({listed(dns_sans(f.cert)) or 'no DNS names'})" for f in leaves],
                limit=3,
                separator="; ",
            )
            raise refuse(
                CERT_FIELD,
                Reason.CERT_MULTIPLE_LEAVES,
                f"holds {len(leaves)} server certificates: {described}. Upload one server "
                "certificate with its intermediates",
            )
        if unsigned:
            first = next((f for f in unsigned if not f.self_issued), unsigned[0])
            raise refuse(
                CERT_FIELD,
                Reason.CERT_LEAF_IS_CA,
                f"holds only CA certificates: {first.label} is a CA certificate "
                "(basicConstraints CA:TRUE) and cannot serve a domain. Put your server "
                "certificate first, then its intermediates",
            )
        raise refuse(
            CERT_FIELD,
            Reason.CERT_NO_LEAF,
            "holds no server certificate: every certificate issues another one. Put your "
            "server certificate first, then its intermediates",
        )

    @staticmethod
    def _check_key(leaf: _Facts, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
        if key.public_key() != leaf.public_key:
            raise refuse(
                KEY_FIELD,
                Reason.KEY_MISMATCH,
                f"does not belong to the certificate {leaf.label} (their public keys differ). "
                "Upload the key you created together with the CSR for this certificate",
            )

    @staticmethod
    def _check_name(leaf: _Facts, domain: str) -> None:
        if not domain or domain != domain.strip().lower() or domain.endswith("."):
            raise refuse(
                DOMAIN_FIELD, Reason.DOMAIN_INVALID, f"{domain!r} is not a normalised domain name"
            )
        sans = dns_sans(leaf.cert)
        if not sans:
            raise refuse(
                CERT_FIELD,
                Reason.CERT_NAME_MISMATCH,
                f"{leaf.label} has no DNS names in its subjectAltName, so it covers no domain "
                "(browsers ignore the Common Name). Ask your CA for a certificate with "
                f"{domain} as a subject alternative name",
            )
        if not any(covers(san, domain) for san in sans):
            raise refuse(
                CERT_FIELD,
                Reason.CERT_NAME_MISMATCH,
                f"{leaf.label} does not cover {domain}; it covers {listed(sans)}. "
                + (
                    "A *.name wildcard covers exactly one extra label, not the bare name. "
                    if any(san.startswith("*.") for san in sans)
                    else ""
                )
                + f"Upload a certificate that names {domain}",
            )

    @staticmethod
    def _check_dates(subject: _Facts, now: datetime, what: str) -> None:
        cert = subject.cert
        if now < cert.not_valid_before_utc:
            raise refuse(
                CERT_FIELD,
                Reason.CERT_NOT_YET_VALID,
                f"{what} {subject.label} is not valid before {_fmt(cert.not_valid_before_utc)} "
                f"(now is {_fmt(now)}); upload it after that time or check the clock of "
                "the machine that issued it",
            )
        if now > cert.not_valid_after_utc:  # RFC 5280: notAfter is inclusive
            raise refuse(
                CERT_FIELD,
                Reason.CERT_EXPIRED,
                f"{what} {subject.label} expired on {_fmt(cert.not_valid_after_utc)} "
                f"(now is {_fmt(now)}); renew it with your CA and upload the new one",
            )

    @staticmethod
    def _check_strength(subject: _Facts, what: str) -> None:
        public_key = subject.public_key
        if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < MIN_RSA_BITS:
            raise refuse(
                CERT_FIELD,
                Reason.KEY_TOO_WEAK,
                f"{what} {subject.label} has a {public_key.key_size}-bit RSA key; at least "
                f"{MIN_RSA_BITS} bits are required. Create a new key and CSR "
                "(openssl req -new -newkey rsa:2048 -sha256 -nodes -keyout app.key -out app.csr)",
            )
        if isinstance(public_key, ec.EllipticCurvePublicKey) and (
            public_key.curve.name not in SUPPORTED_CURVES
        ):
            raise refuse(
                CERT_FIELD,
                Reason.KEY_UNSUPPORTED,
                f"{what} {subject.label} uses curve {public_key.curve.name}; use P-256 or P-384",
            )
        if not isinstance(public_key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise refuse(
                CERT_FIELD,
                Reason.KEY_UNSUPPORTED,
                f"{what} {subject.label} has a key type browsers do not accept; "
                "use RSA (2048 bits or more) or ECDSA P-256/P-384",
            )
        hash_name = _signature_hash_name(subject.cert)
        if hash_name in _WEAK_HASHES:
            raise refuse(
                CERT_FIELD,
                Reason.CERT_SHA1_SIGNATURE,
                f"{what} {subject.label} is signed with {_WEAK_HASHES[hash_name]}, which browsers "
                "reject; ask your CA to reissue it with SHA-256",
            )

    def _verify(
        self, domain: str, leaf: _Facts, facts: list[_Facts], now: datetime
    ) -> list[x509.Certificate]:
        """Build the path with cryptography's verifier; explain a refusal from the bundle."""
        name = domain
        if domain.startswith("*."):
            name = _WILDCARD_PROBE + domain[1:]
        try:
            subject = x509.DNSName(name)
            verifier = PolicyBuilder().store(self._store).time(now).build_server_verifier(subject)
        except ValueError:
            raise refuse(
                DOMAIN_FIELD, Reason.DOMAIN_INVALID, f"{domain!r} is not a valid DNS name"
            ) from None
        others = [f.cert for f in facts if f is not leaf]
        try:
            built = verifier.verify(leaf.cert, others)
        except VerificationError as error:
            raise self._explain(leaf, facts, now, error) from None
        except PARSE_ERRORS as error:  # a damaged extension the verifier reads differently
            raise refuse(
                CERT_FIELD, Reason.CERT_MALFORMED, f"cannot be verified: {error}"
            ) from None
        chain = list(built[:-1])  # the root is the trust anchor; clients already have it
        for cert in chain[1:]:
            facts_of = _Facts.of(cert)
            self._check_strength(facts_of, "the intermediate certificate")
        return chain

    def _explain(
        self, leaf: _Facts, facts: list[_Facts], now: datetime, error: VerificationError
    ) -> Exception:
        """Walk the bundle by issuer names to say why no trusted path exists."""
        path = [leaf]
        current = leaf
        while len(path) <= MAX_PATH:
            if any(root.issued(current) or root.cert == current.cert for root in self._roots):
                break  # reaches a trust root by name: the verifier objected to something else
            if current.self_issued:
                return refuse(
                    CERT_FIELD,
                    Reason.CHAIN_UNTRUSTED,
                    (
                        f"the certificate {current.label} is self-signed"
                        if current is leaf
                        else f"the chain ends at the root {current.label}"
                    )
                    + ", which is not a trusted certificate authority. Use a certificate "
                    "from a publicly trusted CA",
                )
            parent = next(
                (f for f in facts if f.issued(current) and all(f is not p for p in path)), None
            )
            if parent is None:
                return refuse(
                    CERT_FIELD,
                    Reason.CHAIN_INTERMEDIATE_MISSING,
                    f"the issuer of {current.label}, "
                    f"'{current.issuer.rfc4514_string()}', is neither in the bundle nor a "
                    "trusted root: an intermediate certificate is missing (or the root is "
                    "not trusted). Append the intermediate certificates your CA provided "
                    "after your certificate",
                )
            what = "the intermediate certificate"
            self._check_dates(parent, now, what)
            self._check_strength(parent, what)
            path.append(parent)
            current = parent
        if len(path) > MAX_PATH:
            return refuse(
                CERT_FIELD,
                Reason.CHAIN_INVALID,
                f"the chain is longer than {MAX_PATH} certificates; upload only your "
                "certificate and the intermediates your CA provided",
            )
        reason = str(error).split(" (encountered processing", 1)[0]
        return refuse(
            CERT_FIELD,
            Reason.CHAIN_INVALID,
            f"the chain to a trusted root was refused: {reason}",
        )


def covers(san: str, domain: str) -> bool:
    """RFC 6125 matching: ``*.example.com`` covers ``a.example.com`` only (one label).

    A wildcard domain (``*.example.com``) is covered only by the same wildcard SAN.
    """
    if san == domain:
        return True
    if not san.startswith("*.") or domain.startswith("*."):
        return False
    base = san[2:]
    first, dot, rest = domain.partition(".")
    return bool(dot) and bool(first) and rest == base and "." in base
