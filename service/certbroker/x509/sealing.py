"""Private keys at rest: AES-256-GCM under one key-encryption key (KEK) from a file.

Why: the store (SQLite file, PostgreSQL dumps, backups) must never hold a usable
TLS key. Each key is sealed with a fresh random nonce; the associated data binds
the blob to the name it belongs to, so a blob copied onto another domain's row
fails to open instead of serving the wrong key.

Blob format (version 1)::

    0x01 | nonce (12 bytes) | ciphertext + 16-byte tag

The version byte is also authenticated (it is part of the associated data), so
a future format cannot be confused with this one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import shlex
import stat
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEK_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
VERSION_1: Final = 1
#: Sealed at start-up and stored once, so a restart with another KEK fails loudly
#: before any real key is needed.
CANARY_AAD: Final = "certbroker:kek-canary"
_CANARY_PLAINTEXT: Final = b"certbroker key-encryption key canary v1"
_KEY_ID_LABEL: Final = b"certbroker kek id v1"


class KekError(ValueError):
    """The KEK is missing or malformed, or a blob does not open with it."""


class KeySealer:
    """Seals and opens private keys with one KEK. Holds the key; never prints it."""

    __slots__ = ("_aead", "_key_id")

    def __init__(self, kek: bytes) -> None:
        if len(kek) != KEK_BYTES:
            raise KekError(f"the key-encryption key must be {KEK_BYTES} bytes, got {len(kek)}")
        self._aead = AESGCM(kek)
        # A one-way, domain-separated value: safe to log and store, useless to an attacker.
        self._key_id = hmac.new(kek, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"KeySealer(key_id={self._key_id!r})"

    @property
    def key_id(self) -> str:
        """Short public fingerprint of the KEK (8 hex digits), to tell KEKs apart in logs."""
        return self._key_id

    @classmethod
    def load(cls, path: str) -> KeySealer:
        """Read a KEK file: one line of base64 holding 32 random bytes, mode 0600 or 0400.

        A KEK others can read opens every sealed key in the database and its backups,
        so such a file stops the start (as ssh refuses a private key others can read).
        """
        try:
            with open(path, encoding="ascii") as handle:
                mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)  # the file we read
                if mode & 0o077:
                    raise KekError(
                        f"key-encryption key file {path} has mode {mode:04o}, open to group "
                        f"or others; run `chmod 600 {shlex.quote(path)}` (for a mounted "
                        "secret, give it mode 0400)"
                    )
                text = handle.read(4096)
        except FileNotFoundError:
            raise KekError(
                f"key-encryption key file {path} does not exist; create one with "
                "KeySealer.generate_file (or `head -c 32 /dev/urandom | base64 > FILE`)"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise KekError(f"cannot read key-encryption key file {path}: {error}") from None
        stripped = text.strip()
        if not stripped:
            raise KekError(f"key-encryption key file {path} is empty")
        try:
            kek = base64.b64decode(stripped, validate=True)
        except (binascii.Error, ValueError):
            raise KekError(
                f"key-encryption key file {path} is not one line of base64 "
                f"(expected {KEK_BYTES} random bytes, base64-encoded)"
            ) from None
        if len(kek) != KEK_BYTES:
            raise KekError(
                f"key-encryption key file {path} decodes to {len(kek)} bytes; "
                f"it must hold exactly {KEK_BYTES}"
            )
        return cls(kek)

    @staticmethod
    def generate_file(path: str) -> None:
        """Write a new random KEK to ``path`` with mode 0600; never overwrite an existing file."""
        encoded = base64.b64encode(secrets.token_bytes(KEK_BYTES)) + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KekError(
                f"{path} already exists; refusing to overwrite a key-encryption key "
                "(every sealed key would become unreadable)"
            ) from None
        except OSError as error:
            raise KekError(f"cannot create key-encryption key file {path}: {error}") from None
        try:
            os.fchmod(fd, 0o600)  # the mode given to open() is reduced by umask, never raised
            os.write(fd, encoded)
            os.fsync(fd)
        finally:
            os.close(fd)

    def seal(self, plaintext: bytes, aad: str) -> bytes:
        """Encrypt ``plaintext`` bound to ``aad`` (e.g. the domain name)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        version = bytes([VERSION_1])
        return version + nonce + self._aead.encrypt(nonce, plaintext, _aad(version, aad))

    def open(self, blob: bytes, aad: str) -> bytes:
        """Decrypt a blob from :meth:`seal`; raises ``KekError`` if it does not authenticate."""
        if len(blob) < 1 + NONCE_BYTES + TAG_BYTES:
            raise KekError(f"sealed blob is {len(blob)} bytes, too short to be a sealed key")
        if blob[0] != VERSION_1:
            raise KekError(f"sealed blob has unknown format version {blob[0]}")
        nonce = blob[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[1 + NONCE_BYTES :], _aad(blob[:1], aad))
        except InvalidTag:
            raise KekError(
                "wrong key-encryption key or data bound to another name "
                f"(this KEK's id is {self._key_id})"
            ) from None

    def seal_canary(self) -> bytes:
        """A blob the server stores once and re-opens at every start (see :meth:`check_canary`)."""
        return self.seal(_CANARY_PLAINTEXT, CANARY_AAD)

    def check_canary(self, blob: bytes) -> None:
        """Raise ``KekError`` unless ``blob`` was sealed by this same KEK."""
        try:
            opened = self.open(blob, CANARY_AAD)
        except KekError:
            raise KekError(
                f"the configured key-encryption key (id {self._key_id}) is not the one the "
                "store was sealed with; start with the original KEK file"
            ) from None
        if not hmac.compare_digest(opened, _CANARY_PLAINTEXT):
            raise KekError("the stored KEK canary is not a canary")


def _aad(version: bytes, aad: str) -> bytes:
    return version + b"|" + aad.encode("utf-8")
