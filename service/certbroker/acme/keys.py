"""Certificate private keys and CSRs.

Keys are returned as unencrypted PKCS#8 PEM because the caller seals them
immediately (x509 module, AES-GCM at rest); this module never stores them.
RSA generation takes tens of milliseconds: call these from a worker thread,
not the event loop.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certbroker.model import KeyAlgorithm


def generate_private_key(alg: KeyAlgorithm = KeyAlgorithm.ECDSA_P256) -> bytes:
    """A fresh key as PKCS#8 PEM: ECDSA P-256 (default, small and fast) or RSA-2048."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if alg is KeyAlgorithm.ECDSA_P256:
        key = ec.generate_private_key(ec.SECP256R1())
    elif alg is KeyAlgorithm.RSA_2048:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:  # pragma: no cover - StrEnum is closed, but a new member must not pass silently
        raise ValueError(f"unsupported key algorithm {alg!r}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_csr(key_pem: bytes, names: list[str]) -> bytes:
    """A PEM CSR for ``names`` (A-labels) signed by ``key_pem``.

    All names go into subjectAltName (that is what ACME authorizes); the first
    is also the CN when it fits the 64-character limit, which some old clients
    still display. The CA decides what ends up in the certificate.
    """
    if not names:
        raise ValueError("a CSR needs at least one name")
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    unique = list(dict.fromkeys(n.lower() for n in names))
    subject = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unique[0])])
        if len(unique[0]) <= 64
        else x509.Name([])
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in unique]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)
