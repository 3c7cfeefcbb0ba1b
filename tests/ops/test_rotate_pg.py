"""``certbroker rotate-kek`` on PostgreSQL, through the real CLI against a throwaway server.

One transaction: a crash in the middle (the CLI killed with SIGKILL while it waits
on a row the test holds, every other key already re-sealed in its transaction)
leaves every key under the old KEK; refused while a broker serves the database,
and a broker cannot start while a rotation runs; after it, a broker on the new
KEK serves the same keys and the old KEK opens nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from certbroker.clock import FakeClock
from certbroker.server import StartupError, run
from certbroker.x509.sealing import KekError, KeySealer
from tests.broker import started_broker
from tests.ops.pg_support import (
    CERTS,
    assert_serves_the_keys,
    blobs,
    key_ids,
    open_all,
    populated,
)
from tests.ops.support import ROOT, certbroker
from tests.pki import NOW

NAMES = [f"c{i}.example.com" for i in range(CERTS)]


async def _wait_for(conn: asyncpg.Connection, sql: str, deadline: float = 60.0) -> None:
    """Poll until ``sql`` answers true (the other process got where we wait for it)."""
    end = time.monotonic() + deadline
    while not await conn.fetchval(sql):
        assert time.monotonic() < end, f"timed out waiting for: {sql}"
        await asyncio.sleep(0.05)


ROTATION_WAITS = (
    "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = "
    "'certbroker rotate-kek' AND wait_event_type = 'Lock'"
)
ROTATION_GONE = (
    "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'certbroker rotate-kek'"
)


async def test_a_crash_mid_rotation_leaves_the_old_kek_then_a_rotation_moves_all(
    tmp_path: Path, postgres_dsn: str
) -> None:
    settings, old, plain = await populated(tmp_path, postgres_dsn)
    new_file = tmp_path / "kek.new"
    assert (await certbroker("generate-kek", str(new_file))).code == 0
    new = KeySealer.load(str(new_file))
    env = {"CERTBROKER_DB": postgres_dsn, "CERTBROKER_KEK_FILE": settings.kek_file}

    # The crash: hold the canary row (re-sealed last), let the rotation re-seal everything
    # else in its transaction and wait on that row, then kill it.
    holder = await asyncpg.connect(postgres_dsn)
    # pg_stat_activity is read once per transaction: watch from outside the holder's
    watcher = await asyncpg.connect(postgres_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT value FROM meta WHERE key = 'kek_canary' FOR UPDATE")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "certbroker_client.cli",
            "rotate-kek",
            "--new-kek",
            str(new_file),
            env={k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")} | env,
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await _wait_for(watcher, ROTATION_WAITS)
            # meanwhile no broker may start: it would read the old canary, then meet new keys
            with pytest.raises(StartupError, match=r"a KEK rotation \(certbroker rotate-kek\)"):
                await run(settings)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            _, err = await proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        await tx.rollback()
        await _wait_for(watcher, ROTATION_GONE)  # its backend saw the client gone and aborted
    finally:
        await holder.close()
        await watcher.close()
    assert await key_ids(postgres_dsn) == {old.key_id}
    assert await open_all(postgres_dsn, old) == plain
    await assert_serves_the_keys(settings, NAMES)  # the old KEK still serves everything

    done = await certbroker("rotate-kek", "--new-kek", str(new_file), env=env)
    assert done.code == 0, done.err
    assert f"under KEK id {new.key_id} in one transaction" in done.out
    assert f"{CERTS} certificate keys" in done.out and "2 order keys" in done.out
    assert await key_ids(postgres_dsn) == {new.key_id}
    assert await open_all(postgres_dsn, new) == plain  # the new KEK alone opens everything
    for blob, aad in (await blobs(postgres_dsn)).values():
        with pytest.raises(KekError):
            old.open(blob, aad)  # the old KEK opens nothing
    with pytest.raises(StartupError, match="not the key-encryption key"):
        await run(settings)
    await assert_serves_the_keys(replace(settings, kek_file=str(new_file)), NAMES)

    again = await certbroker(
        "rotate-kek", "--kek", str(new_file), "--new-kek", str(new_file), env=env
    )
    assert again.code == 0, again.err
    assert "re-sealed nothing" in again.out


async def test_refused_while_a_broker_serves_naming_it(tmp_path: Path, postgres_dsn: str) -> None:
    settings, old, _ = await populated(tmp_path, postgres_dsn)
    new_file = tmp_path / "kek.new"
    KeySealer.generate_file(str(new_file))
    env = {"CERTBROKER_DB": postgres_dsn, "CERTBROKER_KEK_FILE": settings.kek_file}
    async with started_broker(replace(settings, broker_id="edge-7"), FakeClock(NOW)):
        refused = await certbroker("rotate-kek", "--new-kek", str(new_file), env=env)
    assert refused.code == 1
    assert "1 broker(s) serve this database: edge-7 (from 127.0.0.1:" in refused.err
    assert "stop every broker first" in refused.err and "Traceback" not in refused.err
    assert await key_ids(postgres_dsn) == {old.key_id}  # nothing changed
    # stopped: the lock went with the broker's session
    done = await certbroker("rotate-kek", "--new-kek", str(new_file), env=env)
    assert done.code == 0, done.err


async def test_bad_input_is_refused_precisely(tmp_path: Path, postgres_dsn: str) -> None:
    settings, old, _ = await populated(tmp_path, postgres_dsn)
    other = tmp_path / "other.kek"
    KeySealer.generate_file(str(other))
    new_file = tmp_path / "kek.new"
    KeySealer.generate_file(str(new_file))
    # the wrong current KEK: names the id the database needs, changes nothing
    wrong = await certbroker(
        "rotate-kek", "--kek", str(other), "--new-kek", str(new_file), "--db", postgres_dsn
    )
    assert wrong.code == 1
    assert f"sealed with KEK id {old.key_id}: pass that key file as --kek" in wrong.err
    assert await key_ids(postgres_dsn) == {old.key_id}
    # a database nobody can reach: the variable named, the password hidden
    unreachable = await certbroker(
        "rotate-kek",
        "--new-kek",
        str(new_file),
        env={
            "CERTBROKER_DB": "postgresql://cb:s3cret@127.0.0.1:1/cb",
            "CERTBROKER_KEK_FILE": settings.kek_file,
        },
    )
    assert unreachable.code == 1
    assert "CERTBROKER_DB=postgresql://cb:***@127.0.0.1:1/cb: cannot connect" in unreachable.err
    assert "s3cret" not in unreachable.err
