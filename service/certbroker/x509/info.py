"""Public facts of a certificate chain, as the API and the store show them.

One function for every source (Let's Encrypt and custom uploads) so the two kinds
of certificate are described identically: the same fingerprint, the same serial
format, the same algorithm names.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certbroker.model import CertificateInfo

_CURVE_NAMES = {"secp256r1": "P256", "secp384r1": "P384", "secp521r1": "P521"}


def key_algorithm_name(public_key: CertificatePublicKeyTypes) -> str:
    """``ECDSA_P256``, ``RSA_2048``, ``RSA_4096``, ``ECDSA_P384``…: what a person compares."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA_{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = public_key.curve.name
        return f"ECDSA_{_CURVE_NAMES.get(curve, curve.upper())}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ED25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "ED448"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA_{public_key.key_size}"
    return "UNKNOWN"


def dns_sans(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names of the subjectAltName, lowercased, in certificate order.

    The Common Name is deliberately not used: browsers ignore it since 2017.
    """
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    # A dict keeps the order and drops repeats in linear time: a 64 KiB upload can
    # hold ~20,000 names, and a list membership test made that quadratic.
    names = dict.fromkeys(
        name.lower().rstrip(".") for name in extension.value.get_values_for_type(x509.DNSName)
    )
    return tuple(names)


def info_for_leaf(leaf: x509.Certificate, chain_pem: str, cert_id: int = 0) -> CertificateInfo:
    """Facts of ``leaf``; the validator calls this with the parsed leaf to avoid parsing twice."""
    serial = leaf.serial_number
    return CertificateInfo(
        id=cert_id,
        sans=dns_sans(leaf),
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        serial=f"{serial:x}" if serial >= 0 else f"-{-serial:x}",
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        sha256_fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        chain_pem=chain_pem,
        key_algorithm=key_algorithm_name(leaf.public_key()),
    )


def certificate_info(chain_pem: str, cert_id: int = 0) -> CertificateInfo:
    """Facts of the first certificate (the leaf) of a PEM chain.

    For chains the broker already trusts (issued by ACME or validated on upload);
    bad input raises ``ValueError`` rather than a user-facing error.
    """
    certs = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
    return info_for_leaf(certs[0], chain_pem, cert_id)
