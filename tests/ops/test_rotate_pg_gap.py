"""A rotation in the gap while a serving broker's lock connection was down.

The serving lock (``store/serving.py``) is held on one connection; when that
connection drops (a PostgreSQL restart, a network cut, ``pg_terminate_backend``)
the broker takes the lock again within a ping interval, and in that gap a
``rotate-kek`` is not refused. The broker then still seals new keys with the
retired KEK and cannot open any key the rotation re-sealed: it must not go on
serving as if nothing happened. It stops, saying why, so its supervisor (and the
operator) restart it with the new KEK file.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from certbroker.ops import OpsError
from certbroker.ops.rotate_pg import _rotate
from certbroker.x509.sealing import KeySealer
from tests.infra.ports import free_port
from tests.integration.lab import BrokerProcess
from tests.ops.pg_support import populated

MARK = "application_name LIKE 'certbroker serve %' AND datname = current_database()"
HELD = f"SELECT count(*) > 0 FROM pg_stat_activity WHERE {MARK}"  # noqa: S608 (fixed text)
DROP = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {MARK}"  # noqa: S608


async def _rotate_in_the_gap(dsn: str, ring: KeySealer) -> None:
    """Drop the broker's serving-lock session and rotate before it takes the lock again
    (retried in the rare case it does so first: the ping runs every 10 s)."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(20):
            end = time.monotonic() + 30
            while not await conn.fetchval(HELD):
                assert time.monotonic() < end, "the broker never held the serving lock"
                await asyncio.sleep(0.05)
            await conn.execute(DROP)
            try:
                await _rotate(dsn, ring)
            except OpsError as error:
                assert "serve this database" in str(error), error
                continue
            return
    finally:
        await conn.close()
    raise AssertionError("the broker always took the lock again before the rotation")


async def test_a_broker_that_finds_its_kek_retired_after_a_gap_stops(
    tmp_path: Path, postgres_dsn: str
) -> None:
    settings, old, _ = await populated(tmp_path, postgres_dsn)
    new_file = tmp_path / "kek.new"
    KeySealer.generate_file(str(new_file))
    new = KeySealer.load(str(new_file))
    log = tmp_path / "broker.log"
    process = BrokerProcess(
        settings,
        free_port(),
        log,
        {"CERTBROKER_ACME_DIRECTORY": "off", "CERTBROKER_TRUST_BUNDLE": settings.trust_bundle},
    )
    await asyncio.to_thread(process.start)
    try:
        await _rotate_in_the_gap(postgres_dsn, new.also_opening(old))
        assert process.proc is not None
        end = time.monotonic() + 60  # a ping interval (10 s) and the new lock, under load
        while process.proc.poll() is None:
            assert time.monotonic() < end, f"the broker kept serving: {log.read_text()}"
            await asyncio.sleep(0.2)
    finally:
        await asyncio.to_thread(process.terminate)
    text = log.read_text()
    assert process.proc.returncode == 1, text
    assert f"re-sealed under KEK id {new.key_id}" in text
    assert "certbroker: stopped: CERTBROKER_KEK_FILE=" in text
    assert "restart it with the new KEK file" in text and "Traceback" not in text
