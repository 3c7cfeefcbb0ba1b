"""Key and file hygiene in the SQLite store: retired keys erased after the retention,
the bounded certificate cache, and 0600 database files.

Compaction runs through the real ``Compactor`` on a ``FakeClock`` over a real file;
what is checked is what a plain connection finds on disk.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from certbroker.clock import FakeClock
from certbroker.housekeeping import Compactor
from certbroker.model import Domain, Source
from certbroker.store.base import NewCertificate, PendingOrder
from certbroker.store.sqlite import SqliteStore
from tests.store.records import T0, make_cert, make_domain, raw

DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
WEEK = timedelta(days=7)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "broker.sqlite3"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(str(db_path))
    try:
        yield s
    finally:
        await s.close()


async def install(
    store: SqliteStore, domain: Domain, source: Source, serial: str, at: datetime
) -> Domain:
    """Store a new certificate and make it the domain's LE or custom one, as the broker does."""
    async with store.transaction() as tx:
        info = await tx.add_certificate(
            NewCertificate(domain.name, source, make_cert(domain.name, serial, at), sealed(serial))
        )
        field = "le_cert" if source is Source.LETS_ENCRYPT else "custom_cert"
        changed = replace(domain, serving=source, updated_at=at, **{field: info})
        return await tx.put_domain(changed)


async def write(store: SqliteStore, domain: Domain) -> Domain:
    async with store.transaction() as tx:
        return await tx.put_domain(domain)


def sealed(serial: str) -> bytes:
    """A stand-in sealed key, distinctive enough to look for in the file's bytes."""
    return f"sealed-{serial}-".encode() * 8


def keys(db_path: Path) -> dict[str, bytes]:
    """Serial → sealed key of every certificate row on disk."""
    return {
        str(serial): bytes(key)  # type: ignore[arg-type]
        for serial, key in raw(db_path, "SELECT serial, key_sealed FROM certificates")
    }


async def compact_at(
    store: SqliteStore, when: datetime, events: timedelta = WEEK, keys: timedelta = WEEK
) -> int:
    """One compaction run at ``when`` with the given event and key retentions."""
    clock = FakeClock(when)
    await Compactor(store, clock, events, timedelta(hours=1), keys).compact_once()
    return await store.compacted_through()


# -- retired keys ------------------------------------------------------------------------


async def test_a_superseded_letsencrypt_key_is_erased_after_the_retention(
    store: SqliteStore, db_path: Path
) -> None:
    first = await install(store, make_domain("a.example.com"), Source.LETS_ENCRYPT, "01", T0)
    assert first.le_cert is not None
    renewed_at = T0 + 60 * DAY
    renewed = await install(store, first, Source.LETS_ENCRYPT, "02", renewed_at)
    assert renewed.le_cert is not None

    await compact_at(store, renewed_at + WEEK - SECOND)
    assert set(keys(db_path)) == {"01", "02"}  # still inside the grace period

    await compact_at(store, renewed_at + WEEK + SECOND)
    assert keys(db_path) == {"02": sealed("02")}
    assert await store.load_key(first.le_cert.id) is None
    assert await store.load_key(renewed.le_cert.id) == sealed("02")
    assert first.le_cert.id not in store.cached_certificate_ids()
    assert await store.get_domain("a.example.com") == renewed
    # the bytes themselves are zeroed in the file, not left in free pages
    raw(db_path, "PRAGMA wal_checkpoint(TRUNCATE)")
    on_disk = db_path.read_bytes()
    assert sealed("02") in on_disk
    assert sealed("01") not in on_disk


async def test_serving_and_standby_keys_stay_replaced_and_deleted_custom_keys_go(
    store: SqliteStore, db_path: Path
) -> None:
    d = await install(store, make_domain("a.example.com"), Source.LETS_ENCRYPT, "1e", T0)
    d = await install(store, d, Source.CUSTOM, "c1", T0 + DAY)  # LE is now the warm standby
    d = await install(store, d, Source.CUSTOM, "c2", T0 + 2 * DAY)  # c1 replaced
    other = await install(store, make_domain("b.example.com"), Source.LETS_ENCRYPT, "b1", T0)
    async with store.transaction() as tx:  # an order in flight keeps its key in the orders table
        await tx.put_order(
            PendingOrder("b.example.com", "example.com", ("b.example.com",), b"order-key", T0)
        )

    await compact_at(store, T0 + 100 * DAY)
    assert keys(db_path) == {"1e": sealed("1e"), "c2": sealed("c2"), "b1": sealed("b1")}

    deleted_at = T0 + 101 * DAY
    d = await write(store, replace(d, custom_cert=None, serving=Source.LETS_ENCRYPT,
                                   updated_at=deleted_at))  # fmt: skip
    await compact_at(store, deleted_at + WEEK - SECOND)
    assert "c2" in keys(db_path)
    await compact_at(store, deleted_at + WEEK + SECOND)
    assert keys(db_path) == {"1e": sealed("1e"), "b1": sealed("b1")}
    assert await store.get_domain("a.example.com") == d
    assert await store.get_domain("b.example.com") == other
    order = await store.get_order("b.example.com")
    assert order is not None and order.key_sealed == b"order-key"


async def test_a_key_named_by_a_replayable_event_stays_until_that_event_is_compacted(
    store: SqliteStore, db_path: Path
) -> None:
    """A router resuming from before the renewal is told to serve the old certificate."""
    first = await install(store, make_domain("a.example.com"), Source.LETS_ENCRYPT, "01", T0)
    assert first.le_cert is not None
    await install(store, first, Source.LETS_ENCRYPT, "02", T0 + DAY)

    # keys kept 7 days, events 30: at day 9 the key's time is up, the event naming it is not
    await compact_at(store, T0 + 9 * DAY, events=30 * DAY)
    replayed = (await store.events_after(0, 10))[0].domain
    assert replayed is not None and replayed.le_cert == first.le_cert
    assert await store.load_key(first.le_cert.id) == sealed("01")

    await compact_at(store, T0 + 31 * DAY, events=30 * DAY)
    assert [e.revision for e in await store.events_after(0, 10)] == [2]
    assert set(keys(db_path)) == {"02"}


async def test_keys_retired_before_the_upgrade_start_their_retention_at_the_first_run(
    store: SqliteStore, db_path: Path
) -> None:
    """An older version kept retired keys without marking them."""
    d = await install(store, make_domain("a.example.com"), Source.LETS_ENCRYPT, "01", T0)
    await install(store, d, Source.LETS_ENCRYPT, "02", T0 + DAY)
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("UPDATE certificates SET retired_at = NULL, retired_revision = NULL")
    conn.close()

    first_run = T0 + 200 * DAY
    await compact_at(store, first_run)
    assert set(keys(db_path)) == {"01", "02"}  # marked now, not erased at once
    await compact_at(store, first_run + WEEK + SECOND)
    assert set(keys(db_path)) == {"02"}


async def test_a_domain_rewritten_without_a_certificate_change_retires_nothing(
    store: SqliteStore, db_path: Path
) -> None:
    d = await install(store, make_domain("a.example.com"), Source.LETS_ENCRYPT, "01", T0)
    for i in range(1, 4):
        d = await write(store, replace(d, updated_at=T0 + i * DAY))
    await store.close()
    reopened = await SqliteStore.open(str(db_path))  # nothing cached: the store must look
    try:
        await write(reopened, replace(d, updated_at=T0 + 5 * DAY))
        await compact_at(reopened, T0 + 100 * DAY)
    finally:
        await reopened.close()
    assert raw(db_path, "SELECT serial, retired_at FROM certificates") == [("01", None)]


async def test_keys_deleted_with_a_domain_or_a_finished_order_are_zeroed_after_compaction(
    store: SqliteStore, db_path: Path
) -> None:
    """Every delete of a sealed key zeroes its bytes, not only compaction's own.

    RemoveDomain deletes the domain's certificates at once, and a finished order
    (the certificate stored) drops the order row holding the same key sealed again.
    Compaction used to switch ``secure_delete`` off when it was done, so those
    deletes after the first compaction left the sealed bytes in free pages.
    """
    gone = await install(store, make_domain("gone.example.com"), Source.LETS_ENCRYPT, "g1", T0)
    await install(store, make_domain("kept.example.com"), Source.LETS_ENCRYPT, "k1", T0)
    order_key = b"order-key-of-done.example.com-" * 8
    async with store.transaction() as tx:
        await tx.put_order(
            PendingOrder("done.example.com", "example.com", ("done.example.com",), order_key, T0)
        )
    await compact_at(store, T0 + DAY)  # nothing to erase yet; it runs all the same

    async with store.transaction() as tx:
        await tx.delete_order("done.example.com")  # the certificate was stored
        await tx.delete_domain(replace(gone, updated_at=T0 + DAY))  # RemoveDomain

    raw(db_path, "PRAGMA wal_checkpoint(TRUNCATE)")
    on_disk = db_path.read_bytes()
    assert sealed("k1") in on_disk
    assert sealed("g1") not in on_disk
    assert order_key not in on_disk


# -- the certificate info cache ----------------------------------------------------------


async def test_the_certificate_cache_is_bounded_and_evicts_the_least_recently_used(
    db_path: Path,
) -> None:
    store = await SqliteStore.open(str(db_path), certificate_cache=2)
    try:
        domains = [
            await install(store, make_domain(f"{n}.example.com"), Source.CUSTOM, f"0{i}", T0)
            for i, n in enumerate("abc")
        ]
        a, b, c = (d.custom_cert.id for d in domains if d.custom_cert is not None)
        assert store.cached_certificate_ids() == [b, c]
        assert await store.certificate(b) == domains[1].custom_cert  # used: now the newest
        assert await store.certificate(a) == domains[0].custom_cert  # read back, evicts c
        assert store.cached_certificate_ids() == [b, a]
        # every row still decodes whole while the cache holds fewer than it needs
        listed = await store.list_domains(None, "", 10)
        assert [d.custom_cert for d in listed] == [d.custom_cert for d in domains]
        assert len(store.cached_certificate_ids()) == 2
    finally:
        await store.close()


# -- file modes --------------------------------------------------------------------------


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o000])
async def test_a_new_database_and_its_wal_and_shm_are_0600(tmp_path: Path, mask: int) -> None:
    path = tmp_path / "new" / "broker.sqlite3"
    with umask(mask):
        store = await SqliteStore.open(str(path))
        try:
            await install(store, make_domain("a.example.com"), Source.CUSTOM, "01", T0)
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
            assert mode(path.parent) == 0o700 & ~mask
        finally:
            await store.close()


async def test_an_existing_world_readable_database_is_made_0600(tmp_path: Path) -> None:
    path = tmp_path / "broker.sqlite3"
    with umask(0o022):
        older = sqlite3.connect(path)  # as an older version left it, -wal and -shm in place
        older.execute("PRAGMA journal_mode=WAL")
        older.execute("CREATE TABLE t (x)")
        older.commit()
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert [mode(p) for p in files] == [0o644] * 3
        store = await SqliteStore.open(str(path))
    try:
        assert [mode(p) for p in files] == [0o600] * 3
    finally:
        await store.close()
        older.close()
