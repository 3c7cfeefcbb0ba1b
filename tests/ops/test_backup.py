"""``certbroker backup``: taken while the broker writes, restored, and served again.

The restore is the README's procedure: stop, copy the backup over
``CERTBROKER_DB``, start with the same KEK file.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import stat
from pathlib import Path

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2
from tests.broker import broker_settings, started_broker
from tests.ops.support import PKI, add_custom, certbroker, trust_file
from tests.pki import NOW

WRITES_BEFORE = 4
WRITES_AFTER = 3


async def test_backup_during_writes_restores_to_a_consistent_database(tmp_path: Path) -> None:
    live = tmp_path / "live"
    settings = broker_settings(live, trust_bundle=str(trust_file(tmp_path)))
    backup = tmp_path / "backups" / "broker.backup"
    backup.parent.mkdir()
    added: list[str] = []
    async with started_broker(settings, FakeClock(NOW)) as broker:
        stop = asyncio.Event()

        async def keep_adding() -> None:
            while not stop.is_set():
                name = f"d{len(added)}.example.com"
                await add_custom(broker.stub, name)
                added.append(name)

        writer = asyncio.create_task(keep_adding())
        try:
            while len(added) < WRITES_BEFORE:
                assert not writer.done()
                await asyncio.sleep(0.02)
            result = await certbroker("backup", str(backup), env={"CERTBROKER_DB": settings.db})
            at_backup = len(added)
            while len(added) < at_backup + WRITES_AFTER:  # the broker kept writing throughout
                assert not writer.done()
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await writer
    assert result.code == 0, result.err
    assert f"backup written to {backup}" in result.out
    assert "the key-encryption key is NOT in the backup" in result.out
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600

    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one file
        in_backup = {row[0] for row in conn.execute("SELECT name FROM domains")}
    assert set(added[:WRITES_BEFORE]) <= in_backup <= set(added)

    # restore: a stopped broker, the backup copied over CERTBROKER_DB, the same KEK file
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copyfile(backup, restored / "broker.sqlite3")
    again = broker_settings(
        restored, trust_bundle=settings.trust_bundle, kek_file=settings.kek_file
    )
    async with started_broker(again, FakeClock(NOW)) as broker:
        listed = await broker.stub.ListDomains(broker_pb2.ListDomainsRequest(page_size=1000))
        assert {d.domain for d in listed.domains} == in_backup
        newest = max(in_backup, key=added.index)
        for name in in_backup:
            record = await broker.running.store.get_domain(name)
            assert record is not None
            if record.custom_cert is None:
                # added, its upload (the next RPC) not yet committed when the copy was taken
                assert name == newest
                continue
            material = await broker.running.broker.serving_material(record)
            assert material is not None, name
            assert material.private_key_pem.encode() == PKI.leaf(name).key_pem()


async def test_backup_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    settings = broker_settings(tmp_path)
    async with started_broker(settings):
        pass
    target = tmp_path / "existing"
    target.write_text("keep me")
    env = {"CERTBROKER_DB": settings.db}
    refused = await certbroker("backup", str(target), env=env)
    assert refused.code == 1
    assert refused.err.strip() == f"error: {target} already exists; pass --force to overwrite it"
    assert target.read_text() == "keep me"
    forced = await certbroker("backup", str(target), "--force", env=env)
    assert forced.code == 0, forced.err
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".certbroker-backup-")]


async def test_backup_of_a_missing_database_names_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite3"
    result = await certbroker("backup", str(tmp_path / "b"), "--db", str(missing))
    assert result.code == 1
    assert result.err.strip() == f"error: CERTBROKER_DB={missing}: no such database file"
    assert "Traceback" not in result.err
