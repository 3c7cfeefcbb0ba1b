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
    assert blob[0] == 1
    assert len(blob) == 1 + 12 + len(KEY_PEM) + 16
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
    with pytest.raises(KekError, match="wrong key-encryption key or data bound to another name"):
        other.open(blob, "www.example.com")


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:20], "too short"),
        (lambda b: b"\x02" + b[1:], "unknown format version 2"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "wrong key-encryption key"),
        (lambda b: b[:5] + bytes([b[5] ^ 1]) + b[6:], "wrong key-encryption key"),
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
        (b"\xff\xfe\x00", "cannot read"),
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
