"""``certbroker migrate-db``: move a single-node SQLite installation to PostgreSQL.

Nothing is re-issued or re-sealed: every row is copied as it is — domains,
certificates with their sealed keys (so the same KEK opens them), orders in
flight, the event log with its revisions (watchers resume where they were), the
meta table (ACME account, KEK canary, DNS-01 delegation secret, compaction point),
the issuance history, and the rate-limit spends and pauses (certbroker.limits).
Both schemas are the same numbered migrations with the same columns
(``migrations/`` and ``migrations/postgres/``), so a row's values go over unchanged.

Safe to retry: the copy is one PostgreSQL transaction (all or nothing), the
target must be empty, and the counts are compared before it commits. The source
is read in one snapshot through a read-only connection; stop the broker first,
or what it writes after the snapshot stays behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiosqlite
import asyncpg

from certbroker.store.factory import parse
from certbroker.store.postgres import migrate
from certbroker.store.sqlite import SqliteStore

# Referenced rows first (domains name certificates).
TABLES = (
    "certificates",
    "domains",
    "events",
    "issuances",
    "orders",
    "meta",
    "limit_spends",
    "limit_pauses",
    "removed_backoff",
)
_IDENTITY = ("certificates", "issuances", "limit_spends")  # ids from a sequence on PostgreSQL
_BATCH = 5000


class MigrationError(Exception):
    """The migration cannot start or did not verify; nothing was written. One line."""


@dataclass(frozen=True)
class Summary:
    counts: dict[str, int]
    revision: int  # the newest revision ever assigned; the next write gets revision + 1
    compacted_through: int

    def lines(self) -> list[str]:
        rows = ", ".join(f"{n} {table}" for table, n in self.counts.items())
        return [
            f"copied {rows}",
            f"verified: every count matches; revision {self.revision} "
            f"(compacted through {self.compacted_through}); the same KEK opens every key",
        ]


def _convert(kind: str) -> Callable[[Any], Any]:
    """SQLite's loose values as the PostgreSQL column's type wants them."""
    if kind == "bytea":
        return lambda v: v.encode() if isinstance(v, str) else v
    if kind in ("bigint", "integer", "smallint"):
        return lambda v: int(v) if v is not None else None
    if kind == "text":
        return lambda v: v.decode() if isinstance(v, bytes) else v
    raise MigrationError(f"no conversion for a PostgreSQL {kind} column")


async def _columns(conn: asyncpg.Connection[asyncpg.Record], table: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1 "
        "AND is_generated = 'NEVER' ORDER BY ordinal_position",  # the database computes those
        table,
    )
    return [(r[0], r[1]) for r in rows]


async def _versions_sqlite(src: aiosqlite.Connection) -> list[int]:
    async with src.execute("SELECT version FROM schema_migrations ORDER BY version") as cur:
        return [int(r[0]) for r in await cur.fetchall()]


async def _scalar(src: aiosqlite.Connection, sql: str) -> Any:
    async with src.execute(sql) as cur:
        row = await cur.fetchone()
    return row[0] if row is not None else None


async def migrate_db(source: str, target: str) -> Summary:
    """Copy ``source`` (a SQLite path or ``sqlite:PATH``) into the empty PostgreSQL ``target``."""
    src_location, dst_location = parse(source), parse(target)
    if src_location.backend != "sqlite":
        raise MigrationError("--from must be a SQLite database: sqlite:PATH")
    if dst_location.backend != "postgresql":
        raise MigrationError("--to must be a PostgreSQL database: postgresql://…")
    path = src_location.target
    if not os.path.isfile(path):
        raise MigrationError(f"--from {path}: no such file")
    # Bring the file to this version's schema, as `certbroker serve` would on start.
    await (await SqliteStore.open(path)).close()
    try:
        dst = await asyncpg.connect(dst_location.target, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        raise MigrationError(f"--to {dst_location.describe()}: cannot connect: {error}") from None
    try:
        await migrate(dst)
        src = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
        try:
            await src.execute("BEGIN")  # one snapshot for every table
            return await _copy(src, dst)
        finally:
            await src.close()
    finally:
        await dst.close()


async def _copy(src: aiosqlite.Connection, dst: asyncpg.Connection[asyncpg.Record]) -> Summary:
    versions = await _versions_sqlite(src)
    target_versions = [
        int(r[0]) for r in await dst.fetch("SELECT version FROM schema_migrations ORDER BY 1")
    ]
    if versions != target_versions:
        raise MigrationError(
            f"schema versions differ (SQLite {versions}, PostgreSQL {target_versions}); "
            "run this with the certbroker version that wrote the database"
        )
    async with dst.transaction():
        # The writers' lock: a broker started on the target meanwhile waits for us.
        await dst.execute("SELECT value FROM revision_counter WHERE id = 1 FOR UPDATE")
        found = {t: int(await dst.fetchval(f"SELECT COUNT(*) FROM {t}")) for t in TABLES}  # noqa: S608
        found["revision"] = int(await dst.fetchval("SELECT value FROM revision_counter"))
        if any(found.values()):
            held = ", ".join(f"{n} {k}" for k, n in found.items() if n)
            raise MigrationError(
                f"the target database is not empty ({held}); migrate into a new, empty database"
            )
        counts = {}
        for table in TABLES:
            counts[table] = await _copy_table(src, dst, table)
        revision = int(
            await _scalar(src, "SELECT seq FROM sqlite_sequence WHERE name = 'events'") or 0
        )
        newest = int(await _scalar(src, "SELECT COALESCE(MAX(revision), 0) FROM events"))
        revision = max(revision, newest)
        await dst.execute("UPDATE revision_counter SET value = $1 WHERE id = 1", revision)
        for table in _IDENTITY:
            await _advance_identity(src, dst, table)
        await _verify(src, dst, counts, revision)
        raw = await dst.fetchval("SELECT value FROM meta WHERE key = 'compacted_through'")
    return Summary(counts, revision, int(bytes(raw).decode()) if raw else 0)


async def _advance_identity(
    src: aiosqlite.Connection, dst: asyncpg.Connection[asyncpg.Record], table: str
) -> None:
    """Ids go on from the highest SQLite ever gave: none is handed out twice (AUTOINCREMENT)."""
    used = await _scalar(src, f"SELECT seq FROM sqlite_sequence WHERE name = '{table}'")  # noqa: S608
    copied = await dst.fetchval(f"SELECT COALESCE(MAX(id), 0) FROM {table}")  # noqa: S608
    top = max(int(used or 0), int(copied))
    if top:
        await dst.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), $1)", top)


async def _copy_table(
    src: aiosqlite.Connection, dst: asyncpg.Connection[asyncpg.Record], table: str
) -> int:
    columns = await _columns(dst, table)
    names = [name for name, _ in columns]
    convert = [_convert(kind) for _, kind in columns]
    async with src.execute(f"PRAGMA table_info({table})") as cur:
        have = {str(r[1]) for r in await cur.fetchall()}
    missing = [n for n in names if n not in have]
    if missing:
        raise MigrationError(f"the SQLite table {table} lacks the columns {missing}")
    copied = 0
    async with src.execute(f"SELECT {', '.join(names)} FROM {table}") as cur:  # noqa: S608
        while batch := await cur.fetchmany(_BATCH):
            records = [tuple(f(v) for f, v in zip(convert, row, strict=True)) for row in batch]
            await dst.copy_records_to_table(table, records=records, columns=names)
            copied += len(records)
    return copied


async def _verify(
    src: aiosqlite.Connection,
    dst: asyncpg.Connection[asyncpg.Record],
    counts: dict[str, int],
    revision: int,
) -> None:
    """Compare what each side holds now, before the copy commits."""
    for table in TABLES:
        expected = int(await _scalar(src, f"SELECT COUNT(*) FROM {table}"))  # noqa: S608
        there = int(await dst.fetchval(f"SELECT COUNT(*) FROM {table}"))  # noqa: S608
        if not expected == there == counts[table]:
            raise MigrationError(
                f"{table}: {expected} rows in SQLite, {there} in PostgreSQL after the copy; "
                "nothing was committed"
            )
    there = int(await dst.fetchval("SELECT value FROM revision_counter"))
    if there != revision:
        raise MigrationError(f"revision {revision} in SQLite, {there} in PostgreSQL")
    for table, key in (("certificates", "id"), ("orders", "domain")):
        if await _keys_digest_sqlite(src, table, key) != await _keys_digest_pg(dst, table, key):
            raise MigrationError(f"{table}: the sealed keys differ after the copy")


async def _keys_digest_sqlite(src: aiosqlite.Connection, table: str, key: str) -> str:
    digest = hashlib.sha256()
    async with src.execute(f"SELECT {key}, key_sealed FROM {table} ORDER BY {key}") as cur:  # noqa: S608
        while batch := await cur.fetchmany(_BATCH):
            for row_key, sealed in batch:
                digest.update(f"{row_key}:{len(sealed)}:".encode() + bytes(sealed))
    return digest.hexdigest()


async def _keys_digest_pg(dst: asyncpg.Connection[asyncpg.Record], table: str, key: str) -> str:
    digest = hashlib.sha256()
    order = "" if key == "id" else ' COLLATE "C"'  # text keys in byte order, as SQLite sorts
    async for row_key, sealed in dst.cursor(
        f"SELECT {key}, key_sealed FROM {table} ORDER BY {key}{order}"  # noqa: S608
    ):
        digest.update(f"{row_key}:{len(sealed)}:".encode() + bytes(sealed))
    return digest.hexdigest()
