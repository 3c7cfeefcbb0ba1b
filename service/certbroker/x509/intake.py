"""Turn uploaded bytes into certificates and a private key, or say precisely what is wrong.

Why a module of its own: people upload what their CA or their tools gave them —
PEM bundles in any order with notes between the blocks, Windows line ends, a
single DER ``.cer``, a ``.p7b``, keys in PKCS#1, PKCS#8 or SEC1, sometimes
encrypted, sometimes cut short by a copy-paste. Each of these deserves a
message that tells the person what to do next, and a stable ``reason`` the
dashboard can branch on. Nothing here judges trust; that is ``validate``.

Every refusal is ``InvalidArgument`` naming the request field
(``certificate`` or ``private_key``). The cryptography parsers are lazy in
places (extensions, public keys), so :func:`parse_certificates` touches those
parts once, here, so that later code can use them without surprises.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from certbroker.bounds import MAX_UPLOAD_FIELD_BYTES
from certbroker.errors import InvalidArgument

#: Largest accepted certificate or key input. A leaf with a few intermediates is
#: 5 to 10 KiB of PEM; 64 KiB leaves room for long chains without letting a request
#: make the parsers chew on megabytes.
#: (The number lives in ``certbroker.bounds`` beside the gRPC message limit it must fit.)
MAX_INPUT_BYTES: Final = MAX_UPLOAD_FIELD_BYTES

#: RSA keys beyond this cost seconds per handshake and are refused, not parsed at length.
MAX_RSA_BITS: Final = 8192

CERT_FIELD: Final = "certificate"
KEY_FIELD: Final = "private_key"
DOMAIN_FIELD: Final = "domain"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: Curves browsers and the verifier accept for server certificates.
SUPPORTED_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})

DECRYPT_HINT: Final = (
    "decrypt it first, for example: openssl pkey -in app.key -out app-decrypted.key"
)


class Reason(StrEnum):
    """Stable reason codes of a refused upload (``InvalidArgument.reason``)."""

    INPUT_TOO_LARGE = "INPUT_TOO_LARGE"
    CERT_NOT_PEM_OR_DER = "CERT_NOT_PEM_OR_DER"
    CERT_TRUNCATED = "CERT_TRUNCATED"
    CERT_MALFORMED = "CERT_MALFORMED"
    CERT_NO_LEAF = "CERT_NO_LEAF"
    CERT_MULTIPLE_LEAVES = "CERT_MULTIPLE_LEAVES"
    CERT_LEAF_IS_CA = "CERT_LEAF_IS_CA"
    CERT_NAME_MISMATCH = "CERT_NAME_MISMATCH"
    CERT_EXPIRED = "CERT_EXPIRED"
    CERT_NOT_YET_VALID = "CERT_NOT_YET_VALID"
    CERT_SHA1_SIGNATURE = "CERT_SHA1_SIGNATURE"
    KEY_TOO_WEAK = "KEY_TOO_WEAK"
    KEY_UNSUPPORTED = "KEY_UNSUPPORTED"
    KEY_MISMATCH = "KEY_MISMATCH"
    KEY_ENCRYPTED = "KEY_ENCRYPTED"
    KEY_INVALID = "KEY_INVALID"
    KEY_TRUNCATED = "KEY_TRUNCATED"
    CHAIN_INTERMEDIATE_MISSING = "CHAIN_INTERMEDIATE_MISSING"
    CHAIN_UNTRUSTED = "CHAIN_UNTRUSTED"
    CHAIN_INVALID = "CHAIN_INVALID"
    DOMAIN_INVALID = "DOMAIN_INVALID"


def refuse(field: str, reason: Reason, description: str) -> InvalidArgument:
    """The one way this package builds an error, so field, reason and text travel together."""
    return InvalidArgument.one(field, description, reason=reason.value)


#: Exceptions cryptography raises for bytes it cannot make sense of.
PARSE_ERRORS: Final = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
)

_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 #]{1,64})-----")
_CERT_LABELS: Final = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"})
_PKCS7_LABELS: Final = frozenset({b"PKCS7", b"PKCS #7 SIGNED DATA", b"CMS"})
_PLAIN_KEY_LABELS: Final = frozenset({b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"})
_ENCRYPTED_KEY_LABEL: Final = b"ENCRYPTED PRIVATE KEY"
_PUBLIC_KEY_LABELS: Final = frozenset({b"PUBLIC KEY", b"RSA PUBLIC KEY"})
_CSR_LABELS: Final = frozenset({b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"})


@dataclass(frozen=True)
class PemBlock:
    """One ``-----BEGIN X----- … -----END X-----`` block, decoded."""

    number: int  # 1-based position in the input, for messages
    label: bytes
    der: bytes
    encrypted: bool  # RFC 1421 "Proc-Type: 4,ENCRYPTED" header (legacy OpenSSL key encryption)

    @property
    def name(self) -> str:
        return f"PEM block {self.number} ({self.label.decode('ascii')})"


def check_size(data: bytes, field: str) -> None:
    """Refuse oversized input before any parser sees it."""
    if len(data) > MAX_INPUT_BYTES:
        raise refuse(
            field,
            Reason.INPUT_TOO_LARGE,
            f"is {len(data)} bytes; the limit is {MAX_INPUT_BYTES} bytes (64 KiB). "
            "Upload only the server certificate and its intermediates"
            if field == CERT_FIELD
            else f"is {len(data)} bytes; the limit is {MAX_INPUT_BYTES} bytes (64 KiB)",
        )


def has_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


def pem_blocks(data: bytes, field: str, truncated: Reason) -> list[PemBlock]:
    """Every complete PEM block, in input order; stray text between blocks is ignored.

    A BEGIN line without its END line (before the next BEGIN), or a body that is
    not base64, is reported as truncated: that is what a bad copy-paste looks like.
    """
    blocks: list[PemBlock] = []
    pos = 0
    number = 0
    while True:
        begin = _BEGIN.search(data, pos)
        if begin is None:
            break
        number += 1
        label = begin.group(1)
        label_text = label.decode("ascii")
        end_marker = b"-----END " + label + b"-----"
        end = data.find(end_marker, begin.end())
        following = _BEGIN.search(data, begin.end())
        if end < 0 or (following is not None and following.start() < end):
            raise refuse(
                field,
                truncated,
                f"PEM block {number} starts with '-----BEGIN {label_text}-----' but has no "
                f"'-----END {label_text}-----' line: the file looks truncated. Copy the whole "
                "block, including its END line",
            )
        body = data[begin.end() : end]
        encrypted = False
        lines: list[bytes] = []
        for line in body.splitlines():
            if b":" in line:  # RFC 1421 headers: Proc-Type, DEK-Info
                if line.strip().startswith(b"Proc-Type:") and b"ENCRYPTED" in line:
                    encrypted = True
                continue
            lines.append(line)
        compact = b"".join(b"".join(lines).split())
        try:
            der = base64.b64decode(compact, validate=True)
        except binascii.Error:
            der = b""
        if not der:
            raise refuse(
                field,
                truncated,
                f"PEM block {number} ({label_text}) is not valid base64: it is truncated or "
                "was altered (for example by a word processor). Export it again",
            )
        blocks.append(PemBlock(number, label, der, encrypted))
        pos = end + len(end_marker)
    return blocks


def der_declared_length(der: bytes) -> int | None:
    """Total length a DER SEQUENCE announces in its header, or None if it is not one.

    Used only to tell "cut short" apart from "not a certificate" in messages.
    """
    if len(der) < 2 or der[0] != 0x30:
        return None
    first = der[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or len(der) < 2 + count:
        return None
    return 2 + count + int.from_bytes(der[2 : 2 + count], "big")


def _is_truncated(der: bytes) -> bool:
    declared = der_declared_length(der)
    return declared is not None and declared > len(der)


def _load_der_certificate(
    der: bytes, what: str, *, allow_trailing: bool = False
) -> x509.Certificate:
    if _is_truncated(der):
        raise refuse(
            CERT_FIELD,
            Reason.CERT_TRUNCATED,
            f"{what} is truncated: it announces {der_declared_length(der)} bytes but holds "
            f"{len(der)}. Upload the complete file",
        )
    if allow_trailing:  # OpenSSL "TRUSTED CERTIFICATE": the certificate, then trust settings
        declared = der_declared_length(der)
        if declared is not None:
            der = der[:declared]
    try:
        return x509.load_der_x509_certificate(der)
    except PARSE_ERRORS as error:
        raise refuse(
            CERT_FIELD,
            Reason.CERT_MALFORMED,
            f"{what} is not a valid X.509 certificate ({error}). Export it again from your CA",
        ) from None


def _load_der_pkcs7(der: bytes, what: str) -> list[x509.Certificate]:
    if _is_truncated(der):
        raise refuse(
            CERT_FIELD,
            Reason.CERT_TRUNCATED,
            f"{what} is truncated: it announces {der_declared_length(der)} bytes but holds "
            f"{len(der)}. Upload the complete file",
        )
    try:
        certs = pkcs7.load_der_pkcs7_certificates(der)
    except PARSE_ERRORS as error:
        raise refuse(
            CERT_FIELD,
            Reason.CERT_MALFORMED,
            f"{what} is not a valid PKCS#7 certificate bundle ({error})",
        ) from None
    if not certs:
        raise refuse(
            CERT_FIELD, Reason.CERT_NO_LEAF, f"{what} is a PKCS#7 file with no certificates"
        )
    return certs


def _touch(cert: x509.Certificate, what: str) -> None:
    """Parse the lazily decoded parts now, so a damaged extension is reported here."""
    try:
        _ = cert.extensions
        _ = cert.public_key()
        _ = cert.not_valid_before_utc, cert.not_valid_after_utc, cert.subject, cert.issuer
    except UnsupportedAlgorithm as error:
        raise refuse(
            CERT_FIELD,
            Reason.KEY_UNSUPPORTED,
            f"{what} uses a public key type that is not supported ({error}); "
            "use an RSA (2048 bits or more) or ECDSA P-256/P-384 key",
        ) from None
    except PARSE_ERRORS as error:
        raise refuse(
            CERT_FIELD,
            Reason.CERT_MALFORMED,
            f"{what} cannot be parsed ({error}). Export it again from your CA",
        ) from None


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """All certificates in ``data`` (PEM bundle, DER, or PKCS#7 PEM/DER), duplicates removed.

    Order is the input order; choosing the leaf and ordering the chain is the
    validator's job, because people paste bundles in every order.
    """
    check_size(data, CERT_FIELD)
    if not data.strip():
        raise refuse(CERT_FIELD, Reason.CERT_NOT_PEM_OR_DER, "is empty; upload your certificate")
    found: list[tuple[str, x509.Certificate]] = []
    if has_pem(data):
        blocks = pem_blocks(data, CERT_FIELD, Reason.CERT_TRUNCATED)
        others: list[bytes] = []
        for block in blocks:
            if block.label in _CERT_LABELS:
                cert = _load_der_certificate(
                    block.der, block.name, allow_trailing=block.label == b"TRUSTED CERTIFICATE"
                )
                found.append((block.name, cert))
            elif block.label in _PKCS7_LABELS:
                found.extend((block.name, c) for c in _load_der_pkcs7(block.der, block.name))
            else:
                others.append(block.label)
        if not found:
            raise refuse(CERT_FIELD, Reason.CERT_NOT_PEM_OR_DER, _no_certificate_message(others))
    else:
        if data[:1] != b"\x30":
            raise refuse(
                CERT_FIELD,
                Reason.CERT_NOT_PEM_OR_DER,
                "is neither PEM (no '-----BEGIN CERTIFICATE-----' line) nor DER (binary "
                "X.509). Upload the certificate file your CA sent (.crt, .pem, .cer or .p7b)",
            )
        try:
            found.append(("the DER certificate", x509.load_der_x509_certificate(data)))
        except PARSE_ERRORS:
            try:
                certs = pkcs7.load_der_pkcs7_certificates(data)
            except PARSE_ERRORS:
                if _is_truncated(data):
                    raise refuse(
                        CERT_FIELD,
                        Reason.CERT_TRUNCATED,
                        f"is a truncated DER file: it announces {der_declared_length(data)} "
                        f"bytes but holds {len(data)}. Upload the complete file",
                    ) from None
                raise refuse(
                    CERT_FIELD,
                    Reason.CERT_NOT_PEM_OR_DER,
                    "is binary but neither a DER X.509 certificate nor a DER PKCS#7 bundle. "
                    "If it is a PKCS#12 (.pfx/.p12) file, extract the parts with "
                    "'openssl pkcs12 -in app.pfx -nokeys -out app.crt' and "
                    "'openssl pkcs12 -in app.pfx -nocerts -nodes -out app.key'",
                ) from None
            if not certs:
                raise refuse(
                    CERT_FIELD, Reason.CERT_NO_LEAF, "is a PKCS#7 bundle with no certificates"
                ) from None
            found.extend(
                (f"certificate {i + 1} of the PKCS#7 bundle", c) for i, c in enumerate(certs)
            )
    unique: list[x509.Certificate] = []
    for what, cert in found:
        if cert not in unique:
            _touch(cert, what)
            unique.append(cert)
    return unique


def _no_certificate_message(labels: list[bytes]) -> str:
    if any(label in _PLAIN_KEY_LABELS or label == _ENCRYPTED_KEY_LABEL for label in labels):
        return (
            "holds a private key but no certificate: put the key in the private_key field "
            "and the certificate (-----BEGIN CERTIFICATE-----) here"
        )
    if any(label in _CSR_LABELS for label in labels):
        return (
            "is a certificate signing request (CSR), not a certificate: upload the "
            "certificate your CA issued from it"
        )
    if labels:
        kinds = ", ".join(sorted({label.decode("ascii") for label in labels}))
        return f"has no CERTIFICATE block (found: {kinds})"
    return "has no CERTIFICATE block"


def _key_type_check(key: object, what: str) -> PrivateKey:
    """Only RSA and ECDSA on the usual curves: what browsers and the routers can serve."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size > MAX_RSA_BITS:
            raise refuse(
                KEY_FIELD,
                Reason.KEY_UNSUPPORTED,
                f"{what} is an RSA key of {key.key_size} bits; the maximum is {MAX_RSA_BITS}",
            )
        _check_rsa_consistency(key, what)
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in SUPPORTED_CURVES:
            raise refuse(
                KEY_FIELD,
                Reason.KEY_UNSUPPORTED,
                f"{what} is an ECDSA key on curve {key.curve.name}; use P-256 or P-384",
            )
        return key
    raise refuse(
        KEY_FIELD,
        Reason.KEY_UNSUPPORTED,
        f"{what} is a {type(key).__name__.removeprefix('_')} key; use an RSA (2048 bits or more) "
        "or ECDSA P-256/P-384 key",
    )


def _check_rsa_consistency(key: rsa.RSAPrivateKey, what: str) -> None:
    """Cheap algebraic checks of the RSA private numbers.

    Why not cryptography's own check: it tests p and q for primality and costs
    ~40 ms per 2048-bit key, twenty times the whole upload budget. These identities
    catch a damaged or mixed-up key in microseconds; the key's owner gains nothing
    from handing us composite primes, and the public half is compared with the
    certificate separately.
    """
    numbers = key.private_numbers()
    p, q, d = numbers.p, numbers.q, numbers.d
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    ok = (
        p > 1
        and q > 1
        and p * q == n
        and numbers.dmp1 == d % (p - 1)
        and numbers.dmq1 == d % (q - 1)
        and (numbers.iqmp * q) % p == 1
        and (e * d) % (p - 1) == 1
        and (e * d) % (q - 1) == 1
    )
    if not ok:
        raise refuse(
            KEY_FIELD,
            Reason.KEY_INVALID,
            f"{what} is a damaged RSA key (its private numbers are inconsistent). "
            "Export the key again",
        )


def _load_der_key(der: bytes, what: str) -> PrivateKey:
    if _is_truncated(der):
        raise refuse(
            KEY_FIELD,
            Reason.KEY_TRUNCATED,
            f"{what} is truncated: it announces {der_declared_length(der)} bytes but holds "
            f"{len(der)}. Upload the complete key file",
        )
    try:
        # Validation skipped for speed; see _check_rsa_consistency for what replaces it.
        key = serialization.load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
    except TypeError:
        raise refuse(
            KEY_FIELD,
            Reason.KEY_ENCRYPTED,
            f"{what} is encrypted with a passphrase; {DECRYPT_HINT}",
        ) from None
    except PARSE_ERRORS as error:
        raise refuse(
            KEY_FIELD,
            Reason.KEY_INVALID,
            f"{what} is not a valid private key ({error}). Upload the key created with your "
            "CSR (for example app.key)",
        ) from None
    return _key_type_check(key, what)


def parse_private_key(data: bytes) -> PrivateKey:
    """The one private key in ``data`` (PEM or DER; PKCS#1, PKCS#8 or SEC1; RSA or ECDSA).

    Certificates or EC PARAMETERS blocks next to the key are ignored (``openssl
    ecparam -genkey`` and "combined .pem" files contain them); an encrypted key
    is refused with the command that decrypts it.
    """
    check_size(data, KEY_FIELD)
    if not data.strip():
        raise refuse(KEY_FIELD, Reason.KEY_INVALID, "is empty; upload your private key")
    if not has_pem(data):
        if data[:1] != b"\x30":
            raise refuse(
                KEY_FIELD,
                Reason.KEY_INVALID,
                "is neither PEM (no '-----BEGIN PRIVATE KEY-----' line) nor a DER private key. "
                "Upload the key created with your CSR (for example app.key)",
            )
        return _load_der_key(data, "the DER key")
    blocks = pem_blocks(data, KEY_FIELD, Reason.KEY_TRUNCATED)
    encrypted = [b for b in blocks if b.label == _ENCRYPTED_KEY_LABEL or b.encrypted]
    if encrypted:
        raise refuse(
            KEY_FIELD,
            Reason.KEY_ENCRYPTED,
            f"{encrypted[0].name} is encrypted with a passphrase; {DECRYPT_HINT}",
        )
    keys = [b for b in blocks if b.label in _PLAIN_KEY_LABELS]
    if len(keys) > 1:
        raise refuse(
            KEY_FIELD,
            Reason.KEY_INVALID,
            f"holds {len(keys)} private keys; upload only the key of this certificate",
        )
    if not keys:
        labels = {b.label for b in blocks}
        if labels & _PUBLIC_KEY_LABELS:
            detail = "holds a public key; upload the private key (-----BEGIN PRIVATE KEY-----)"
        elif labels & _CERT_LABELS:
            detail = (
                "holds a certificate, not a private key: put it in the certificate field and "
                "the key (-----BEGIN PRIVATE KEY-----) here"
            )
        else:
            kinds = ", ".join(sorted(label.decode("ascii") for label in labels))
            detail = f"has no PRIVATE KEY block (found: {kinds})"
        raise refuse(KEY_FIELD, Reason.KEY_INVALID, detail)
    return _load_der_key(keys[0].der, keys[0].name)


def key_to_pkcs8_pem(key: PrivateKey) -> str:
    """The one form keys are stored and served in: unencrypted PKCS#8 PEM (sealed at rest)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
