"""Keys at rest: round trip, binding to a name, wrong KEK, bad KEK files, safe file creation."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from certbroker.x509 import KekError, KeySealer

KEY_PEM = b"-----BEGIN PRIVATE KEY-----\nnot really a key\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def sealer() -> KeySealer:
    return KeySealer(bytes(range(32)))


def test_round_trip(sealer: KeySealer) -> None:
    blob = sealer.seal(KEY_PEM, "www.example.com")
    assert blob[0] == 2
    assert blob[1:5].hex() == sealer.key_id  # the blob names its KEK
    assert len(blob) == 1 + 4 + 12 + len(KEY_PEM) + 16
    assert KEY_PEM not in blob
    assert sealer.open(blob, "www.example.com") == KEY_PEM


def test_nonce_is_fresh(sealer: KeySealer) -> None:
    assert sealer.seal(KEY_PEM, "a") != sealer.seal(KEY_PEM, "a")


def test_bound_to_name(sealer: KeySealer) -> None:
    blob = sealer.seal(KEY_PEM, "www.example.com")
    with pytest.raises(KekError, match="wrong key-encryption key or data bound to another name"):
        sealer.open(blob, "api.example.com")


def test_wrong_kek(sealer: KeySealer) -> None:
    blob = sealer.seal(KEY_PEM, "www.example.com")
    other = KeySealer(bytes(32))
    with pytest.raises(KekError, match=f"wrong key-encryption key: .*KEK id {sealer.key_id}"):
        other.open(blob, "www.example.com")


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:20], "too short"),
        (lambda b: b"\x03" + b[1:], "unknown format version 3"),
        (lambda b: b"", "empty"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "wrong key-encryption key"),
        (lambda b: b[:2] + bytes([b[2] ^ 1]) + b[3:], "wrong key-encryption key"),  # key id
        (lambda b: b[:5] + bytes([b[5] ^ 1]) + b[6:], "wrong key-encryption key"),  # nonce
    ],
)
def test_damaged_blob(sealer: KeySealer, mangle: object, message: str) -> None:
    blob = sealer.seal(KEY_PEM, "x")
    with pytest.raises(KekError, match=message):
        sealer.open(mangle(blob), "x")  # type: ignore[operator]


def test_key_id_is_stable_short_and_not_the_key(sealer: KeySealer) -> None:
    assert sealer.key_id == KeySealer(bytes(range(32))).key_id
    assert sealer.key_id != KeySealer(bytes(32)).key_id
    assert len(sealer.key_id) == 8
    int(sealer.key_id, 16)
    assert bytes(range(32)).hex()[:8] not in sealer.key_id
    assert repr(sealer) == f"KeySealer(key_id={sealer.key_id!r})"


def test_canary_detects_another_kek(sealer: KeySealer) -> None:
    canary = sealer.seal_canary()
    sealer.check_canary(canary)
    with pytest.raises(KekError, match="not the one the store was sealed with"):
        KeySealer(bytes(32)).check_canary(canary)


def test_wrong_kek_length() -> None:
    with pytest.raises(KekError, match="32 bytes"):
        KeySealer(b"short")


def test_generate_then_load(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    old_umask = os.umask(0)  # the file must still be 0600 with a permissive umask
    try:
        KeySealer.generate_file(str(path))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    assert len(base64.b64decode(text.strip())) == 32
    sealer = KeySealer.load(str(path))
    assert sealer.open(sealer.seal(b"k", "d"), "d") == b"k"


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_text("precious\n")
    with pytest.raises(KekError, match="refusing to overwrite"):
        KeySealer.generate_file(str(path))
    assert path.read_text() == "precious\n"


def test_generate_in_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KekError, match="cannot create"):
        KeySealer.generate_file(str(tmp_path / "nope" / "kek"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"not base64 at all!\n", "not one line of base64"),
        (base64.b64encode(bytes(16)) + b"\n", "decodes to 16 bytes"),
        (base64.b64encode(bytes(33)) + b"\n", "decodes to 33 bytes"),
        (b"\xff\xfe\x00", "holds binary data, not base64 text"),
    ],
)
def test_bad_kek_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "kek"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KekError, match=message) as caught:
        KeySealer.load(str(path))
    assert str(path) in str(caught.value)


def test_missing_kek_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(KekError, match="does not exist") as caught:
        KeySealer.load(str(path))
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o666])
def test_a_kek_open_to_group_or_others_is_refused_with_the_chmod_to_run(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "my keys" / "kek"
    path.parent.mkdir()
    KeySealer.generate_file(str(path))
    path.chmod(mode)
    with pytest.raises(KekError) as caught:
        KeySealer.load(str(path))
    assert f"mode {mode:04o}" in str(caught.value)
    assert f"run `chmod 600 '{path}'`" in str(caught.value)  # quoted: ready to paste


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_kek_only_its_owner_can_read_is_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek"
    KeySealer.generate_file(str(path))
    path.chmod(mode)
    sealer = KeySealer.load(str(path))
    assert sealer.open(sealer.seal(KEY_PEM, "d"), "d") == KEY_PEM


def test_kek_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KekError, match="cannot read"):
        KeySealer.load(str(tmp_path))


def test_kek_error_is_a_value_error() -> None:
    assert issubclass(KekError, ValueError)


def _legacy_blob(kek: bytes, plaintext: bytes, aad: str) -> bytes:
    """A version 1 blob, as brokers sealed before key ids (the documented format)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return b"\x01" + nonce + AESGCM(kek).encrypt(nonce, plaintext, b"\x01|" + aad.encode())


def test_legacy_blobs_stay_readable() -> None:
    kek = bytes(range(32))
    blob = _legacy_blob(kek, KEY_PEM, "www.example.com")
    assert KeySealer.blob_key_id(blob) is None
    assert KeySealer(kek).open(blob, "www.example.com") == KEY_PEM
    with pytest.raises(KekError, match="wrong key-encryption key"):
        KeySealer(bytes(32)).open(blob, "www.example.com")
    # in a keyring, the old KEK still opens it even though the new one seals
    ring = KeySealer(bytes(32)).also_opening(KeySealer(kek))
    assert ring.open(blob, "www.example.com") == KEY_PEM
    with pytest.raises(KekError, match="wrong key-encryption key"):
        ring.open(blob, "api.example.com")


def test_keyring_seals_with_the_new_kek_and_opens_both(sealer: KeySealer) -> None:
    new = KeySealer(bytes(32))
    old_blob = sealer.seal(KEY_PEM, "a")
    ring = new.also_opening(sealer)
    assert ring.key_id == new.key_id
    assert ring.key_ids == (new.key_id, sealer.key_id)
    assert ring.open(old_blob, "a") == KEY_PEM
    new_blob = ring.seal(KEY_PEM, "a")
    assert KeySealer.blob_key_id(new_blob) == new.key_id
    assert KeySealer.blob_key_id(old_blob) == sealer.key_id
    assert new.open(new_blob, "a") == KEY_PEM
    with pytest.raises(KekError, match=f"KEK id {new.key_id}, which is not loaded"):
        sealer.open(new_blob, "a")
    assert repr(ring) == f"KeySealer(key_id={new.key_id!r})"  # never the key
