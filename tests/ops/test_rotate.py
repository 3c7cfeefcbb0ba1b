"""``certbroker rotate-kek``: a crash halfway loses nothing; a rerun finishes; every key opens.

The database holds every kind of sealed secret the broker writes: certificate
keys (uploads through the real server), order keys, an ACME account key, the
KEK canary, plus certificate keys in the legacy format (no key id).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from certbroker.clock import FakeClock
from certbroker.config import Settings
from certbroker.ops import OpsError
from certbroker.ops.commands import rotate_kek_command
from certbroker.ops.rotate import PLAIN_META, SEALED_COLUMNS, SEALED_META, rotate_kek
from certbroker.server import StartupError, run
from certbroker.store.sqlite import SqliteStore
from certbroker.x509.sealing import KeySealer
from tests.broker import broker_settings, started_broker
from tests.ops.support import PKI, add_custom, certbroker, trust_file
from tests.pki import NOW

Blobs = dict[tuple[str, str], bytes]  # (where, row) -> plaintext
CERTS = 7
ORDERS = 3


class Crash(Exception):
    """Stands for the process dying between two batches."""


def _legacy_seal(kek: bytes, plaintext: bytes, aad: str) -> bytes:
    """A version 1 blob (before key ids), as older brokers wrote them."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return b"\x01" + nonce + AESGCM(kek).encrypt(nonce, plaintext, b"\x01|" + aad.encode())


def _blobs(db: str) -> dict[tuple[str, str], tuple[bytes, str]]:
    """Every sealed blob in the database with the name it is bound to."""
    found: dict[tuple[str, str], tuple[bytes, str]] = {}
    with sqlite3.connect(db) as conn:
        for row in conn.execute("SELECT id, domain, key_sealed FROM certificates"):
            found[("certificate", str(row[0]))] = (bytes(row[2]), row[1])
        for row in conn.execute("SELECT domain, key_sealed FROM orders"):
            found[("order", row[0])] = (bytes(row[1]), row[0])
        for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE 'acme_%'"):
            sealed = bytes.fromhex(json.loads(value)["key_sealed"])
            found[("account", key)] = (sealed, "certbroker:acme-account")
        canary = conn.execute("SELECT value FROM meta WHERE key = 'kek_canary'").fetchone()
        found[("canary", "")] = (bytes(canary[0]), "certbroker:kek-canary")
        label = conn.execute("SELECT value FROM meta WHERE key = 'dns01_label_secret'").fetchone()
        found[("label secret", "")] = (bytes(label[0]), "certbroker:dns01-label-secret")
    return found


def _open_all(db: str, sealer: KeySealer) -> Blobs:
    return {where: sealer.open(blob, aad) for where, (blob, aad) in _blobs(db).items()}


def _key_ids(db: str) -> Counter[str | None]:
    return Counter(KeySealer.blob_key_id(blob) for blob, _ in _blobs(db).values())


async def _populated(tmp_path: Path) -> tuple[Settings, KeySealer, Blobs]:
    """A stopped broker's database holding every kind of sealed secret.

    Returns its settings, the KEK that sealed it, and every blob's plaintext.
    """
    settings = broker_settings(tmp_path, trust_bundle=str(trust_file(tmp_path)))
    async with started_broker(settings, FakeClock(NOW)) as broker:
        for i in range(CERTS):
            await add_custom(broker.stub, f"c{i}.example.com")
    old = KeySealer.load(settings.kek_file)
    kek = _raw_kek(settings.kek_file)
    with sqlite3.connect(settings.db) as conn:
        for i in range(ORDERS):
            name = f"o{i}.example.com"
            conn.execute(
                "INSERT INTO orders (domain, registered_domain, names_key, names_json, "
                "key_sealed, started_at) VALUES (?, 'example.com', ?, ?, ?, 0)",
                (name, name, json.dumps([name]), old.seal(f"order key {i}".encode(), name)),
            )
        account = {"key_sealed": old.seal(b"account key", "certbroker:acme-account").hex()}
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            ("acme_account:https://ca.example/dir", json.dumps({**account, "url": "u"}).encode()),
        )
        for cert_id, domain, blob in conn.execute(
            "SELECT id, domain, key_sealed FROM certificates ORDER BY id LIMIT 2"
        ).fetchall():  # two keys in the legacy format, as an older broker sealed them
            legacy = _legacy_seal(kek, old.open(bytes(blob), domain), domain)
            conn.execute("UPDATE certificates SET key_sealed = ? WHERE id = ?", (legacy, cert_id))
    plain = _open_all(settings.db, old)
    assert len(plain) == CERTS + ORDERS + 3  # + account, canary, label secret
    assert _key_ids(settings.db) == {old.key_id: CERTS - 2 + ORDERS + 3, None: 2}
    return settings, old, plain


def _raw_kek(path: str) -> bytes:
    import base64

    return base64.b64decode(Path(path).read_text().strip())


async def test_a_crash_halfway_then_a_rerun_reads_every_key(tmp_path: Path) -> None:
    settings, old, plain = await _populated(tmp_path)
    new_file = tmp_path / "kek.new"
    generated = await certbroker("generate-kek", str(new_file))
    assert generated.code == 0, generated.err
    new = KeySealer.load(str(new_file))
    assert f"KEK id {new.key_id}" in generated.out

    def crash_after_two(batch: int) -> None:
        if batch == 2:
            raise Crash

    with pytest.raises(Crash):
        rotate_kek_command(
            settings.db, settings.kek_file, str(new_file), batch_size=2, after_batch=crash_after_two
        )
    # Halfway: some keys under the new KEK, the rest under the old one; nothing lost.
    halfway = _key_ids(settings.db)
    assert halfway[new.key_id] == 4 and halfway[old.key_id] + halfway[None] == len(plain) - 4
    assert _open_all(settings.db, new.also_opening(old)) == plain
    # The broker refuses to start on a half-rotated database, with either key file.
    for kek_file in (settings.kek_file, str(new_file)):
        with pytest.raises(StartupError, match="rotation is unfinished"):
            await run(replace(settings, kek_file=kek_file))

    # The operator already switched CERTBROKER_KEK_FILE to the new file: the rerun says
    # which key it still needs, changes nothing, and then finishes with it.
    env = {"CERTBROKER_DB": settings.db, "CERTBROKER_KEK_FILE": str(new_file)}
    short = await certbroker("rotate-kek", "--new-kek", str(new_file), env=env)
    assert short.code == 1
    assert "pass that key file as --kek" in short.err and "Traceback" not in short.err
    assert _key_ids(settings.db) == halfway
    done = await certbroker(
        "rotate-kek", "--kek", settings.kek_file, "--new-kek", str(new_file), env=env
    )
    assert done.code == 0, done.err
    assert f"under KEK id {new.key_id}" in done.out

    assert _key_ids(settings.db) == {new.key_id: len(plain)}
    assert _open_all(settings.db, new) == plain  # the new KEK alone opens everything
    with pytest.raises(StartupError, match="not the key-encryption key"):
        await run(settings)  # the old file no longer starts the broker
    async with started_broker(replace(settings, kek_file=str(new_file)), FakeClock(NOW)) as b:
        for i in range(CERTS):
            record = await b.running.store.get_domain(f"c{i}.example.com")
            assert record is not None
            material = await b.running.broker.serving_material(record)
            assert material is not None
            assert material.private_key_pem.encode() == PKI.leaf(record.name).key_pem()


async def test_a_second_run_has_nothing_to_do(tmp_path: Path) -> None:
    settings, old, plain = await _populated(tmp_path)
    new_file = tmp_path / "kek.new"
    KeySealer.generate_file(str(new_file))
    new = KeySealer.load(str(new_file))
    rotate_kek(settings.db, old, new)
    again = rotate_kek(settings.db, old, new)
    assert again.resealed == {} and again.already_new == len(plain) - 1  # the canary aside
    assert _open_all(settings.db, new) == plain


async def test_refused_while_the_broker_serves(tmp_path: Path) -> None:
    settings = broker_settings(tmp_path)
    new_file = tmp_path / "kek.new"
    KeySealer.generate_file(str(new_file))
    async with started_broker(settings):
        result = await certbroker(
            "rotate-kek",
            "--new-kek",
            str(new_file),
            env={"CERTBROKER_DB": settings.db, "CERTBROKER_KEK_FILE": settings.kek_file},
        )
    assert result.code == 1
    assert "in use by certbroker serve" in result.err and "stop the broker first" in result.err
    # nothing changed: the broker still starts with its key
    async with started_broker(settings):
        pass


async def test_every_sealed_column_and_meta_row_is_rotated(tmp_path: Path) -> None:
    """A new ``*sealed*`` column or meta row must be added to ops/rotate.py."""
    settings, _, _ = await _populated(tmp_path)
    with sqlite3.connect(settings.db) as conn:
        meta = {row[0] for row in conn.execute("SELECT key FROM meta")}
    known = {"kek_canary", *(key for key, _, _ in SEALED_META), *PLAIN_META}
    assert {key for key in meta if not key.startswith("acme_account:")} <= known
    store = await SqliteStore.open(str(tmp_path / "db.sqlite3"))
    await store.close()
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        sealed = {
            (table, column[1])
            for table in tables
            for column in conn.execute(f"PRAGMA table_info({table})")
            if "sealed" in column[1]
        }
    assert sealed == {(c.table, c.column) for c in SEALED_COLUMNS}


def test_bad_new_kek_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "raw").write_bytes(bytes(range(200, 232)))
    (tmp_path / "raw").chmod(0o600)
    (tmp_path / "db").write_bytes(b"")
    KeySealer.generate_file(str(tmp_path / "kek"))
    with pytest.raises(OpsError, match=r"^--new-kek: .*binary data, not base64"):
        rotate_kek_command(str(tmp_path / "db"), str(tmp_path / "kek"), str(tmp_path / "raw"))
