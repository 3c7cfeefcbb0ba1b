"""The SQLite store when the database cannot take a write: locked, full. Real files, real locks."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certbroker.errors import StoreUnavailable
from certbroker.model import CertificateInfo, Domain, LetsEncryptState, Source
from certbroker.store.base import NewCertificate
from certbroker.store.sqlite import BUSY_TIMEOUT, SqliteStore
from tests.faults import FullDisk

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def make_domain(name: str) -> Domain:
    return Domain(
        name=name,
        app="app-a",
        letsencrypt_enabled=True,
        le_state=LetsEncryptState.PENDING_DNS,
        serving=Source.NONE,
        created_at=T0,
        updated_at=T0,
        next_run_at=T0,
    )


def make_cert(name: str, serial: str) -> CertificateInfo:
    return CertificateInfo(
        id=0,
        sans=(name,),
        subject=f"CN={name}",
        issuer="CN=Test CA",
        serial=serial,
        not_before=T0,
        not_after=T0 + timedelta(days=90),
        sha256_fingerprint=serial * 32,
        chain_pem=f"-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n",
        key_algorithm="ECDSA_P256",
    )


@pytest.fixture
def disk() -> FullDisk:
    return FullDisk()


@pytest.fixture
async def store(tmp_path: Path, disk: FullDisk) -> AsyncIterator[SqliteStore]:
    s = await disk.open(str(tmp_path / "broker.sqlite3"))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's write lock (the sqlite3 shell, a backup tool): BEGIN IMMEDIATE."""
    other = sqlite3.connect(tmp_path / "broker.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_a_locked_database_is_unavailable_with_a_retry_delay_quickly(
    store: SqliteStore, tmp_path: Path
) -> None:
    async with store.transaction() as tx:
        await tx.put_domain(make_domain("a.example.com"))
    other = sqlite3.connect(tmp_path / "broker.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        async with store.transaction() as tx:
            await tx.put_domain(make_domain("b.example.com"))
    waited = time.monotonic() - started
    other.execute("ROLLBACK")
    other.close()
    assert caught.value.reason == "STORE_BUSY"
    assert caught.value.retry_after == BUSY_TIMEOUT
    assert waited < 5 * BUSY_TIMEOUT.total_seconds()  # not the old 5 s per statement
    # The lock is gone: the same write goes through, and nothing of the failed one stayed.
    async with store.transaction() as tx:
        await tx.put_domain(make_domain("c.example.com"))
    assert await store.get_domain("b.example.com") is None
    assert [e.domain_name for e in await store.events_after(0, 10)] == [
        "a.example.com",
        "c.example.com",
    ]


async def test_reads_go_on_while_another_process_holds_the_write_lock(
    store: SqliteStore, locked: sqlite3.Connection
) -> None:
    assert await store.get_domain("nothing.example.com") is None
    assert await store.due_names(T0, 10) == []


async def test_a_failed_commit_is_rolled_back_before_the_next_transaction(
    store: SqliteStore, disk: FullDisk
) -> None:
    disk.full = True
    with pytest.raises(StoreUnavailable) as caught:
        async with store.transaction() as tx:
            await tx.put_domain(make_domain("lost.example.com"))
    assert caught.value.reason == "STORE_FULL"
    assert caught.value.retry_after is not None
    disk.full = False
    async with store.transaction() as tx:
        await tx.put_domain(make_domain("kept.example.com"))
    assert await store.get_domain("lost.example.com") is None
    assert [e.domain_name for e in await store.events_after(0, 10)] == ["kept.example.com"]
    assert await store.due_names(T0, 10) == ["kept.example.com"]


async def test_a_certificate_whose_commit_failed_leaves_no_stale_cache_entry(
    store: SqliteStore, disk: FullDisk
) -> None:
    """The rolled-back id is handed out again: the cache must not answer with the lost one."""
    disk.fail_certificate_commits = 1
    name = "cert.example.com"
    with pytest.raises(StoreUnavailable):
        async with store.transaction() as tx:
            await tx.put_domain(make_domain(name))
            await tx.add_certificate(
                NewCertificate(name, Source.CUSTOM, make_cert(name, "aa"), b"sealed")
            )
    async with store.transaction() as tx:
        await tx.put_domain(make_domain(name))
        info = await tx.add_certificate(
            NewCertificate(name, Source.CUSTOM, make_cert(name, "bb"), b"sealed")
        )
        await tx.put_domain(replace(make_domain(name), custom_cert=info))
    found = await store.certificate(info.id)
    assert found is not None and found.serial == "bb"


async def test_put_schedule_moves_the_schedule_without_an_event(
    store: SqliteStore, tmp_path: Path
) -> None:
    async with store.transaction() as tx:
        first = await tx.put_domain(make_domain("s.example.com"))
    later = T0 + timedelta(minutes=1)
    moved = replace(first, next_run_at=later, retry=replace(first.retry, next_attempt_at=later))
    async with store.transaction() as tx:
        written = await tx.put_schedule(moved)
    assert written.revision == first.revision
    assert await store.current_revision() == first.revision
    assert await store.get_domain("s.example.com") == moved
    assert await store.due_names(T0, 10) == []
    assert await store.due_names(later, 10) == ["s.example.com"]
    # Read back from the file, not the cache: the columns were really written.
    fresh = await SqliteStore.open(str(tmp_path / "broker.sqlite3"))
    try:
        assert await fresh.get_domain("s.example.com") == moved
    finally:
        await fresh.close()


async def test_writes_queued_behind_a_busy_failure_do_not_each_wait_again(
    store: SqliteStore, locked: sqlite3.Connection
) -> None:
    """Three writers, one busy wait: the ones queued behind it are told at once."""

    async def write(name: str) -> None:
        async with store.transaction() as tx:
            await tx.put_domain(make_domain(name))

    started = time.monotonic()
    results = await asyncio.gather(
        *(write(f"q{i}.example.com") for i in range(3)), return_exceptions=True
    )
    waited = time.monotonic() - started
    assert all(isinstance(r, StoreUnavailable) and r.reason == "STORE_BUSY" for r in results)
    assert waited < 2.5 * BUSY_TIMEOUT.total_seconds(), waited  # not 3 x 1 s
