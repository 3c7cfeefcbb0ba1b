"""Migration 007: the limits ledger starts from what the older quota counted.

A database at schema 006 (the shipped migration files, filled with plain SQL)
with issuances and an order in flight is opened by this version's store, on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from certbroker.limits import ACCOUNT_ORDERS, NAME_SET, REGISTERED_DOMAIN
from certbroker.store.postgres import PostgresStore
from certbroker.store.sqlite import SqliteStore
from tests.store.backends import AnyStore
from tests.store.legacy import postgres_before, sqlite_before

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _micros(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


def _rows(now: datetime) -> list[tuple[str, tuple[object, ...]]]:
    """Issuances and an order in flight, as a broker at schema 006 left them."""
    insert = (
        "INSERT INTO issuances (domain, registered_domain, names_key, serial, issued_at) "
        "VALUES (?, 'example.com', ?, 's', ?)"
    )
    return [
        (insert, ("a.example.com", "a.example.com", _micros(now - 70 * DAY))),  # too old
        (insert, ("a.example.com", "a.example.com", _micros(now - 10 * DAY))),  # a renewal
        (insert, ("b.example.com", "b.example.com", _micros(now - 2 * DAY))),  # new
        (
            "INSERT INTO orders (domain, registered_domain, names_key, names_json, key_sealed, "
            "started_at) VALUES ('c.example.com', 'example.com', 'c.example.com', "
            "'[\"c.example.com\"]', ?, ?)",
            (b"\x00", _micros(now - HOUR)),
        ),
    ]


async def _sqlite_at_006(tmp_path: Path, now: datetime) -> AnyStore:
    path = tmp_path / "broker.sqlite3"
    sqlite_before(path, 7, _rows(now))
    return await SqliteStore.open(str(path))


async def _postgres_at_006(dsn: str, now: datetime) -> AnyStore:
    await postgres_before(dsn, 7, _rows(now))
    return await PostgresStore.open(dsn)


async def _counted(store: AnyStore, now: datetime) -> None:
    try:
        week = now - 7 * DAY
        registered = await store.limit_spends(REGISTERED_DOMAIN, "example.com", week, 10)
        assert len(registered) == 2  # b (new) and c (in flight); a's renewal is exempt
        assert len(await store.limit_spends(NAME_SET, "a.example.com", week, 10)) == 1
        assert len(await store.limit_spends(NAME_SET, "c.example.com", week, 10)) == 1
        assert len(await store.limit_spends(ACCOUNT_ORDERS, "", now - 30 * DAY, 10)) == 2
    finally:
        await store.close()


async def test_sqlite_counts_what_the_old_quota_counted(tmp_path: Path) -> None:
    now = datetime.now(UTC)  # the migration reads the wall clock: it runs once, at upgrade
    await _counted(await _sqlite_at_006(tmp_path, now), now)


async def test_postgres_counts_what_the_old_quota_counted(postgres_dsn: str) -> None:
    now = datetime.now(UTC)
    await _counted(await _postgres_at_006(postgres_dsn, now), now)
