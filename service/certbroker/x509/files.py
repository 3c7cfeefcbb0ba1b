"""Check the broker's own PEM files (TLS identity, client CA, trust roots) before use.

Why: gRPC reports a garbage certificate or a key that does not match it as
"Failed to bind to address", which sends the operator after the wrong problem;
parsing the files first names the file and what is wrong with it. Each function
raises ``PemFileError`` with the reason; the caller adds the variable's name.
"""

from __future__ import annotations

import warnings

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.utils import CryptographyDeprecationWarning

_MAX_BYTES = 4 * 1024 * 1024


class PemFileError(ValueError):
    """A PEM file that cannot serve its purpose; the message says why."""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_BYTES + 1)
    except OSError as error:
        raise PemFileError(f"cannot read: {error.strerror or error}") from None
    if len(data) > _MAX_BYTES:
        raise PemFileError(f"larger than {_MAX_BYTES // 1024 // 1024} MiB")
    return data


def certificates(path: str) -> list[x509.Certificate]:
    """The PEM certificates in ``path`` (at least one)."""
    data = _read(path)
    with warnings.catch_warnings():  # old roots with odd serials are still roots
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise PemFileError("not a PEM certificate file (no readable certificate)") from None


def private_key(path: str) -> PrivateKeyTypes:
    """The unencrypted PEM private key in ``path``."""
    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PemFileError("the key is encrypted; give an unencrypted key") from None
    except ValueError:
        raise PemFileError("not a PEM private key (or an unsupported key type)") from None


def check_server_tls(cert_path: str, key_path: str, client_ca_path: str) -> None:
    """The broker's mTLS files: each parses and the key belongs to the certificate.

    The message starts with the variable to fix, e.g. ``CERTBROKER_TLS_KEY=...: ...``.
    """
    where = {
        "cert": f"CERTBROKER_TLS_CERT={cert_path}",
        "key": f"CERTBROKER_TLS_KEY={key_path}",
        "ca": f"CERTBROKER_TLS_CLIENT_CA={client_ca_path}",
    }
    try:
        leaf = certificates(cert_path)[0]
    except PemFileError as error:
        raise PemFileError(f"{where['cert']}: {error}") from None
    try:
        key = private_key(key_path)
    except PemFileError as error:
        raise PemFileError(f"{where['key']}: {error}") from None
    try:
        certificates(client_ca_path)
    except PemFileError as error:
        raise PemFileError(f"{where['ca']}: {error}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise PemFileError(
            f"{where['key']}: this key does not belong to the certificate in {where['cert']}"
        )
