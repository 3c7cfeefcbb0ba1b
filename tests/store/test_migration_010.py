"""Migration 010: rows that existed before it get ``exact_parent`` and are found by it.

A database at schema 009 (the shipped migration files, filled with plain SQL, as
an older broker left it) is opened by this version's store, on SQLite and on
PostgreSQL: the column holds the parent of each row's exact certificate name, and
the family lookups (``Transaction.family_rows``) find the old rows a new wildcard
covers, so a broker upgraded with tenants in place refuses as before.
"""

from __future__ import annotations

from pathlib import Path

from certbroker.store.postgres import PostgresStore
from certbroker.store.sqlite import SqliteStore
from tests.store.backends import AnyStore, Backend, PostgresBackend, SqliteBackend
from tests.store.legacy import postgres_before, sqlite_before

# name, app, include_apex -> exact_parent
EXISTING = [
    ("y.shop.example", "alice", 0, "shop.example"),
    ("*.w.shop.example", "bob", 1, "shop.example"),  # its apex w.shop.example
    ("*.n.shop.example", "bob", 0, None),  # no exact name on its certificate
    ("shop.example", "alice", 0, "example"),
    ("*.shop.example", "alice", 1, "example"),  # its apex shop.example
    ("a.y.shop.example", "alice", 0, "y.shop.example"),
    ("localhost", "alice", 0, None),  # nothing above a one-label name
    ("*.test", "bob", 1, None),
]
INSERT = (
    "INSERT INTO domains (name, app, letsencrypt_enabled, le_state, serving, key_algorithm, "
    "challenge, include_apex, revision, created_at, updated_at) "
    "VALUES (?, ?, 1, 'PENDING_DNS', 'NONE', 'ECDSA_P256', 'DNS_01', ?, ?, 0, 0)"
)
ROWS = [(INSERT, (name, app, apex, i)) for i, (name, app, apex, _) in enumerate(EXISTING, 1)]


async def _upgraded(backend: Backend, store: AnyStore) -> None:
    try:
        stored = dict(await backend.rows("SELECT name, exact_parent FROM domains"))
        assert stored == {name: parent for name, _, _, parent in EXISTING}
        async with store.transaction() as tx:
            covered = await tx.family_rows((), "shop.example", "carol", 10)
            assert {r.name for r in covered} == {"y.shop.example", "*.w.shop.example"}
            covered = await tx.family_rows((), "shop.example", "alice", 10)
            assert [r.name for r in covered] == ["*.w.shop.example"]
    finally:
        await store.close()


async def test_sqlite_rows_from_before_get_their_exact_parent(tmp_path: Path) -> None:
    path = tmp_path / "broker.sqlite3"
    sqlite_before(path, 10, ROWS)
    await _upgraded(SqliteBackend(path), await SqliteStore.open(str(path)))


async def test_postgres_rows_from_before_get_their_exact_parent(postgres_dsn: str) -> None:
    await postgres_before(postgres_dsn, 10, ROWS)
    await _upgraded(PostgresBackend(postgres_dsn), await PostgresStore.open(postgres_dsn))
