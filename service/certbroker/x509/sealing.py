"""Private keys at rest: AES-256-GCM under one key-encryption key (KEK) from a file.

Why: the store (SQLite file, PostgreSQL dumps, backups) must never hold a usable
TLS key. Each key is sealed with a fresh random nonce; the associated data binds
the blob to the name it belongs to, so a blob copied onto another domain's row
fails to open instead of serving the wrong key.

Blob formats::

    version 2: 0x02 | key id (4 bytes) | nonce (12 bytes) | ciphertext + 16-byte tag
    version 1: 0x01 | nonce (12 bytes) | ciphertext + 16-byte tag   (legacy, read only)

The header (version byte, and the key id in version 2) is authenticated as part
of the associated data, so a future format cannot be confused with these. The key
id names the KEK that sealed the blob, so a sealer holding several KEKs (a
keyring, during a KEK rotation: the new one seals, old and new open) knows which
one to use, and a rotation can tell what is left to re-seal without opening it.
Version 1 blobs (written before key ids) carry no id: every key in the ring is
tried, which is how the old KEK keeps opening them.
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
VERSION_2: Final = 2
KEY_ID_BYTES: Final = 4
#: Sealed at start-up and stored once, so a restart with another KEK fails loudly
#: before any real key is needed.
CANARY_AAD: Final = "certbroker:kek-canary"
_CANARY_PLAINTEXT: Final = b"certbroker key-encryption key canary v1"
_KEY_ID_LABEL: Final = b"certbroker kek id v1"


class KekError(ValueError):
    """The KEK is missing or malformed, or a blob does not open with it."""


class KeySealer:
    """Seals with one KEK and opens with a keyring. Holds the keys; never prints them.

    ``KeySealer(kek)`` seals and opens with ``kek`` alone; :meth:`also_opening`
    adds older KEKs that open what they sealed (a KEK rotation in progress).
    """

    __slots__ = ("_keys",)

    def __init__(self, kek: bytes) -> None:
        if len(kek) != KEK_BYTES:
            raise KekError(f"the key-encryption key must be {KEK_BYTES} bytes, got {len(kek)}")
        # A one-way, domain-separated value: safe to log and store, useless to an attacker.
        key_id = hmac.new(kek, _KEY_ID_LABEL, hashlib.sha256).digest()[:KEY_ID_BYTES]
        # (key id, cipher); the first one seals, all of them open.
        self._keys: tuple[tuple[bytes, AESGCM], ...] = ((key_id, AESGCM(kek)),)

    def __repr__(self) -> str:
        return f"KeySealer(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        """Short public fingerprint of the sealing KEK (8 hex digits), to tell KEKs apart."""
        return self._keys[0][0].hex()

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every KEK this sealer opens with, the sealing one first."""
        return tuple(key_id.hex() for key_id, _ in self._keys)

    def also_opening(self, *others: KeySealer) -> KeySealer:
        """A keyring: seals with this KEK, opens with this one and ``others``' too."""
        ring = KeySealer.__new__(KeySealer)
        keys = list(self._keys)
        for other in others:
            keys.extend(k for k in other._keys if k[0] not in {known for known, _ in keys})
        ring._keys = tuple(keys)
        return ring

    @staticmethod
    def blob_key_id(blob: bytes) -> str | None:
        """The id of the KEK that sealed ``blob``; None for a legacy (version 1) blob."""
        if len(blob) > KEY_ID_BYTES and blob[0] == VERSION_2:
            return blob[1 : 1 + KEY_ID_BYTES].hex()
        return None

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
                "`certbroker generate-kek FILE` (or `openssl rand -base64 32 > FILE`)"
            ) from None
        except UnicodeDecodeError:
            raise KekError(
                f"key-encryption key file {path} holds binary data, not base64 text; "
                "write the 32 random bytes base64-encoded (`base64 < RAW > FILE`) or create "
                "one with `certbroker generate-kek FILE`"
            ) from None
        except OSError as error:
            raise KekError(
                f"cannot read key-encryption key file {path}: {error.strerror or error}"
            ) from None
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
        """Encrypt ``plaintext`` bound to ``aad`` (e.g. the domain name) under the sealing KEK."""
        key_id, aead = self._keys[0]
        nonce = secrets.token_bytes(NONCE_BYTES)
        header = bytes([VERSION_2]) + key_id
        return header + nonce + aead.encrypt(nonce, plaintext, _aad(header, aad))

    def open(self, blob: bytes, aad: str) -> bytes:
        """Decrypt a blob from :meth:`seal`; raises ``KekError`` if it does not authenticate."""
        if not blob:
            raise KekError("sealed blob is empty")
        if blob[0] == VERSION_2:
            header_len = 1 + KEY_ID_BYTES
            key_id = blob[1:header_len]
            candidates = [aead for known, aead in self._keys if known == key_id]
            if not candidates and len(blob) >= header_len + NONCE_BYTES + TAG_BYTES:
                raise KekError(
                    f"wrong key-encryption key: this was sealed with KEK id {key_id.hex()}, "
                    f"which is not loaded (loaded: {', '.join(self.key_ids)})"
                )
        elif blob[0] == VERSION_1:
            header_len = 1
            candidates = [aead for _, aead in self._keys]  # no id: any key may have sealed it
        else:
            raise KekError(f"sealed blob has unknown format version {blob[0]}")
        if len(blob) < header_len + NONCE_BYTES + TAG_BYTES:
            raise KekError(f"sealed blob is {len(blob)} bytes, too short to be a sealed key")
        header = blob[:header_len]
        nonce = blob[header_len : header_len + NONCE_BYTES]
        body = blob[header_len + NONCE_BYTES :]
        for aead in candidates:
            try:
                return aead.decrypt(nonce, body, _aad(header, aad))
            except InvalidTag:
                continue
        raise KekError(
            "wrong key-encryption key or data bound to another name "
            f"(this KEK's id is {self.key_id})"
        )

    def seal_canary(self) -> bytes:
        """A blob the server stores once and re-opens at every start (see :meth:`check_canary`)."""
        return self.seal(_CANARY_PLAINTEXT, CANARY_AAD)

    def check_canary(self, blob: bytes) -> None:
        """Raise ``KekError`` unless ``blob`` was sealed by this same KEK."""
        try:
            opened = self.open(blob, CANARY_AAD)
        except KekError:
            raise KekError(
                f"the configured key-encryption key (id {self.key_id}) is not the one the "
                "store was sealed with; start with the original KEK file"
            ) from None
        if not hmac.compare_digest(opened, _CANARY_PLAINTEXT):
            raise KekError("the stored KEK canary is not a canary")


def _aad(header: bytes, aad: str) -> bytes:
    return header + b"|" + aad.encode("utf-8")
