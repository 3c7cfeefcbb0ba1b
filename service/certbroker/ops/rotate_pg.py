"""``certbroker rotate-kek`` on PostgreSQL: every sealed secret re-sealed in ONE transaction.

The contract: **every broker on the database is stopped** while it runs, as on
SQLite. Rotating beside running brokers would need each of them to hold both
KEKs *and* to seal with the new one before the rotation commits, or a broker
still sealing with the old KEK writes keys the retired KEK alone opens; getting
a fleet there safely takes two rolling restarts (add the new KEK to every
broker, then make it the sealing one) before the rotation and a third after it.
A rotation is rare and takes seconds (see the README's figures), routers keep
serving what they hold while the brokers are down, and issuance resumes when
they restart: stopping them is the simple contract that cannot go wrong.

It is enforced, not just documented: each serving broker holds a shared
advisory lock (``store/serving.py``); the rotation takes it exclusively inside
its transaction, so it is refused while any broker runs (naming each one), and a
broker starting meanwhile is refused until the rotation ends.

One transaction (unlike SQLite's batches, which keep its single writer from
being held for long): PostgreSQL readers are not blocked by it, and a crash or
any error anywhere leaves every blob under the old KEK, so there is nothing to
resume: rerun the same command. Certificate keys, order keys, ACME account keys,
the DNS-01 label secret and the KEK canary (which names the database's KEK) are
re-sealed; ``ops/rotate.py`` lists them, and its test fails when the schema
grows a sealed column it does not know.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from certbroker.ops import OpsError
from certbroker.ops.rotate import (
    CANARY_META,
    ROTATION_META,
    SEALED_COLUMNS,
    SEALED_META,
    Resealing,
    RotationResult,
)
from certbroker.store.acme_account import KEY_AAD as ACCOUNT_AAD
from certbroker.store.acme_account import META_PREFIX as ACCOUNT_PREFIX
from certbroker.store.factory import redact
from certbroker.store.serving import SERVING_LOCK, serving_brokers
from certbroker.x509.sealing import CANARY_AAD, KeySealer

CONNECT_TIMEOUT = 10.0
#: Waiting longer than this for a row lock (another client's open transaction)
#: fails the rotation, which then changed nothing, instead of hanging.
LOCK_TIMEOUT = "30s"
_UPDATE = {
    "certificates": (
        "UPDATE certificates AS t SET key_sealed = u.blob "
        "FROM unnest($1::bigint[], $2::bytea[]) AS u(id, blob) WHERE t.id = u.id"
    ),
    "orders": (
        "UPDATE orders AS t SET key_sealed = u.blob "
        "FROM unnest($1::text[], $2::bytea[]) AS u(domain, blob) WHERE t.domain = u.domain"
    ),
}


def rotate_kek_postgres(dsn: str, current: KeySealer, new: KeySealer) -> RotationResult:
    """Re-seal everything in the database at ``dsn`` under ``new`` (``current`` opens the rest)."""
    return asyncio.run(_rotate(dsn, new.also_opening(current)))


async def _rotate(dsn: str, ring: KeySealer) -> RotationResult:
    where = f"CERTBROKER_DB={redact(dsn)}"
    try:
        conn = await asyncpg.connect(
            dsn,
            timeout=CONNECT_TIMEOUT,
            server_settings={
                "application_name": "certbroker rotate-kek",
                "lock_timeout": LOCK_TIMEOUT,
            },
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise OpsError(f"{where}: cannot connect: {_one_line(error)}") from None
    try:
        async with conn.transaction():
            await _exclusive(conn, where)
            return await _Rotation(conn, ring).run()
    except asyncpg.LockNotAvailableError:
        raise OpsError(
            f"{where}: another session held rows this rotation needed for {LOCK_TIMEOUT}; "
            "nothing was changed: find it in pg_stat_activity, end it, and rerun"
        ) from None
    except asyncpg.UndefinedTableError:
        raise OpsError(f"{where}: not a certbroker database (no certbroker tables)") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise OpsError(
            f"{where}: rotation failed, nothing was changed (rerun it): {_one_line(error)}"
        ) from None
    finally:
        try:
            await asyncio.wait_for(conn.close(), 5)
        except Exception:  # the transaction is over either way
            conn.terminate()


async def _exclusive(conn: Any, where: str) -> None:
    """Take the serving lock exclusively for this transaction, or say which brokers run."""
    if await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SERVING_LOCK):
        return
    brokers = await serving_brokers(conn)
    if not brokers:  # another rotation (exclusive holders are not listed): say so
        raise OpsError(f"{where}: another certbroker rotate-kek is running; let it finish")
    names = "; ".join(b.describe() for b in brokers[:5])
    more = f" and {len(brokers) - 5} more" if len(brokers) > 5 else ""
    raise OpsError(
        f"{where}: {len(brokers)} broker(s) serve this database: {names}{more}; stop every "
        "broker first (a running broker holds only its own KEK and could not open keys "
        "re-sealed under the new one), rerun, then start them with the new KEK file"
    )


class _Rotation(Resealing):
    _left_as = " (nothing was changed)"  # one transaction: a refusal rolls it all back

    def __init__(self, conn: Any, ring: KeySealer) -> None:
        super().__init__(ring)
        self._conn = conn

    async def run(self) -> RotationResult:
        # Every other write transaction locks this row first: nothing interleaves.
        await self._conn.execute("SELECT value FROM revision_counter WHERE id = 1 FOR UPDATE")
        canary = await self._meta(CANARY_META)
        if canary is not None:  # checks the keys before any write
            self._reseal(canary, CANARY_AAD, "the KEK canary")
        for column in SEALED_COLUMNS:
            await self._column(column.table, column.key, column.aad_column, column.what)
        await self._accounts()
        for key, aad, what in SEALED_META:
            blob = await self._meta(key)
            if blob is not None:
                fresh = self._maybe_reseal(blob, aad, key, what)
                if fresh is not None:
                    await self._set_meta(key, fresh)
        # Last, so a lock held on it (or a failure) stops the rotation with all else done
        # but not committed: the tests' crash point.
        if canary is not None and KeySealer.blob_key_id(canary) != self._new_id:
            await self._set_meta(CANARY_META, self._reseal(canary, CANARY_AAD, "the KEK canary"))
        await self._conn.execute("DELETE FROM meta WHERE key = $1", ROTATION_META)
        self.result.batches = 1
        return self.result

    async def _column(self, table: str, key: str, aad_column: str, what: str) -> None:
        rows = await self._conn.fetch(
            f"SELECT {key}, {aad_column}, key_sealed FROM {table} ORDER BY {key} FOR UPDATE"  # noqa: S608 (fixed names)
        )
        keys: list[object] = []
        blobs: list[bytes] = []
        for row in rows:
            fresh = self._maybe_reseal(bytes(row[2]), row[1], f"{what}: {row[1]} ({row[0]})", what)
            if fresh is not None:
                keys.append(row[0])
                blobs.append(fresh)
        if keys:
            await self._conn.execute(_UPDATE[table], keys, blobs)

    async def _accounts(self) -> None:
        rows = await self._conn.fetch(
            "SELECT key, value FROM meta WHERE key LIKE $1 ORDER BY key FOR UPDATE",
            f"{ACCOUNT_PREFIX}:%",
        )
        for key, value in rows:
            data = json.loads(bytes(value))
            fresh = self._maybe_reseal(
                bytes.fromhex(data["key_sealed"]), ACCOUNT_AAD, key, "ACME account keys"
            )
            if fresh is not None:
                data["key_sealed"] = fresh.hex()
                await self._set_meta(key, json.dumps(data).encode())

    async def _meta(self, key: str) -> bytes | None:
        value = await self._conn.fetchval("SELECT value FROM meta WHERE key = $1", key)
        return bytes(value) if value is not None else None

    async def _set_meta(self, key: str, value: bytes) -> None:
        await self._conn.execute("UPDATE meta SET value = $2 WHERE key = $1", key, value)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
