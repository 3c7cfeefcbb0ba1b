"""``certbroker rotate-kek --new-kek FILE``: re-seal every secret under a new KEK.

The rule: **the broker is stopped** while this runs. A running broker holds only
its configured KEK; keys re-sealed under the new one would be unreadable to it.
The rotation takes the database lock (``store/lock.py``) the serving broker
holds, so it refuses to run beside one, and the broker refuses to start while a
rotation is unfinished (the ``kek_rotation`` marker below).

Crash safety: the rotation opens with a keyring (old and new KEK) and seals with
the new one; blobs carry their KEK's id, so what is left to do is visible
without opening anything. Rows are re-sealed in batches, each batch one
transaction, so at every instant each blob is a complete blob under the old or
the new KEK, and a rerun with the same two files skips what is done and
finishes. Order of events:

1. write the marker ``kek_rotation = {"from": old id, "to": new id}``;
2. re-seal certificate keys, order keys, ACME account keys, the DNS-01 label
   secret (batches);
3. in one last transaction: re-seal the KEK canary and delete the marker.

The canary names the database's KEK. It changes last, so until the rotation is
complete the old KEK file stays "the" key, and after it the new one does.
Interrupted? Rerun the same command (``--kek OLD --new-kek NEW``, even if
``CERTBROKER_KEK_FILE`` already points at the new file).

Every place a sealed blob lives is listed here; ``tests/ops/test_rotate.py``
fails when the schema grows a ``*sealed*`` column this module does not know.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from certbroker.ops import OpsError
from certbroker.store.acme_account import KEY_AAD as ACCOUNT_AAD
from certbroker.store.acme_account import META_PREFIX as ACCOUNT_PREFIX
from certbroker.store.delegation_secret import LABEL_AAD as LABEL_SECRET_AAD
from certbroker.store.delegation_secret import META_KEY as LABEL_SECRET_META
from certbroker.store.lock import DatabaseBusy, DatabaseLock
from certbroker.x509.sealing import CANARY_AAD, KekError, KeySealer

CANARY_META = "kek_canary"
ROTATION_META = "kek_rotation"
DEFAULT_BATCH = 200


@dataclass(frozen=True)
class _SealedColumn:
    """A table column of sealed blobs, bound (AAD) to another column's value."""

    what: str
    table: str
    key: str
    aad_column: str
    column: str = "key_sealed"


SEALED_COLUMNS = (
    _SealedColumn("certificate keys", "certificates", "id", "domain"),
    _SealedColumn("order keys", "orders", "domain", "domain"),
)
#: meta rows whose value is one sealed blob: (key, what it is bound to, what to call it);
#: the KEK canary is handled apart (it changes last).
SEALED_META = ((LABEL_SECRET_META, LABEL_SECRET_AAD, "DNS-01 label secrets"),)
#: meta rows that hold nothing sealed (tests/ops/test_rotate.py checks the list is whole).
PLAIN_META = ("compacted_through", ROTATION_META)


@dataclass
class RotationResult:
    new_key_id: str
    resealed: dict[str, int] = field(default_factory=dict)
    already_new: int = 0
    batches: int = 0


def rotate_kek(
    db: str,
    current: KeySealer,
    new: KeySealer,
    *,
    batch_size: int = DEFAULT_BATCH,
    after_batch: Callable[[int], None] | None = None,
) -> RotationResult:
    """Re-seal everything in ``db`` under ``new``; ``current`` opens what is not yet.

    ``after_batch(n)`` runs after each committed batch (progress, and the tests'
    crash injection). Raises ``OpsError`` with what to do.
    """
    if batch_size < 1:
        raise OpsError("--batch-size must be at least 1")
    if not os.path.isfile(db):
        raise OpsError(f"CERTBROKER_DB={db}: no such database file")
    try:
        lock = DatabaseLock.acquire(db, "certbroker rotate-kek")
    except DatabaseBusy as error:
        raise OpsError(
            f"CERTBROKER_DB={db}: {error}; stop the broker first (a running broker "
            "could not open keys re-sealed under the new KEK)"
        ) from None
    except OSError as error:
        raise OpsError(f"CERTBROKER_DB={db}: cannot lock: {error.strerror or error}") from None
    try:
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            ring = new.also_opening(current)
            return _Rotation(conn, ring, batch_size, after_batch).run()
        except sqlite3.Error as error:
            raise OpsError(f"CERTBROKER_DB={db}: {error}") from None
        finally:
            conn.close()
    finally:
        if lock is not None:
            lock.release()


class Resealing:
    """What both rotations (SQLite here, PostgreSQL in ``rotate_pg``) do to one blob:
    re-seal it under the new KEK unless it already is, counting what was done."""

    #: Said after a refusal: what state the database was left in.
    _left_as: str = ""

    def __init__(self, ring: KeySealer) -> None:
        self._ring = ring
        self._new_id = ring.key_id
        self.result = RotationResult(ring.key_id)

    def _maybe_reseal(self, blob: bytes, aad: str, where: str, what: str) -> bytes | None:
        if KeySealer.blob_key_id(blob) == self._new_id:
            self.result.already_new += 1
            return None
        fresh = self._reseal(blob, aad, where)
        self.result.resealed[what] = self.result.resealed.get(what, 0) + 1
        return fresh

    def _reseal(self, blob: bytes, aad: str, where: str) -> bytes:
        try:
            return self._ring.seal(self._ring.open(blob, aad), aad)
        except KekError as error:
            sealed_by = KeySealer.blob_key_id(blob) or "unknown (written before key ids)"
            raise OpsError(
                f"{where} does not open with --kek or --new-kek ({error}); it was sealed "
                f"with KEK id {sealed_by}: pass that key file as --kek{self._left_as}"
            ) from None


class _Rotation(Resealing):
    def __init__(
        self,
        conn: sqlite3.Connection,
        ring: KeySealer,
        batch_size: int,
        after_batch: Callable[[int], None] | None,
    ) -> None:
        super().__init__(ring)
        self._conn = conn
        self._batch = batch_size
        self._after_batch = after_batch

    def run(self) -> RotationResult:
        canary = self._meta(CANARY_META)
        if canary is not None:
            self._reseal(canary, CANARY_AAD, "the KEK canary")  # checks the keys before any write
        old_id = KeySealer.blob_key_id(canary) if canary is not None else None
        with self._transaction():
            self._set_meta(
                ROTATION_META,
                json.dumps({"from": old_id or self._ring.key_ids[-1], "to": self._new_id}).encode(),
            )
        for column in SEALED_COLUMNS:
            self._column(column)
        self._accounts()
        self._meta_blobs()
        with self._transaction():
            if canary is not None:
                fresh = self._meta(CANARY_META)
                if fresh is not None and KeySealer.blob_key_id(fresh) != self._new_id:
                    self._set_meta(CANARY_META, self._reseal(fresh, CANARY_AAD, "the KEK canary"))
            self._conn.execute("DELETE FROM meta WHERE key = ?", (ROTATION_META,))
        return self.result

    def _column(self, c: _SealedColumn) -> None:
        after: object = None
        while True:
            with self._transaction():
                where = f"WHERE {c.key} > ? " if after is not None else ""
                sql = (
                    f"SELECT {c.key}, {c.aad_column}, {c.column} FROM {c.table} "  # noqa: S608
                    f"{where}ORDER BY {c.key} LIMIT ?"
                )
                params = (after, self._batch) if after is not None else (self._batch,)
                rows = self._conn.execute(sql, params).fetchall()
                for key, aad, blob in rows:
                    fresh = self._maybe_reseal(bytes(blob), aad, f"{c.what}: {aad} ({key})", c.what)
                    if fresh is not None:
                        self._conn.execute(
                            f"UPDATE {c.table} SET {c.column} = ? WHERE {c.key} = ?",  # noqa: S608
                            (fresh, key),
                        )
            self._committed()
            if len(rows) < self._batch:
                return
            after = rows[-1][0]

    def _accounts(self) -> None:
        """ACME account keys: meta rows holding JSON with the sealed key in hex."""
        with self._transaction():
            rows = self._conn.execute(
                "SELECT key, value FROM meta WHERE key LIKE ? ORDER BY key",
                (f"{ACCOUNT_PREFIX}:%",),
            ).fetchall()
            for key, value in rows:
                data = json.loads(bytes(value))
                fresh = self._maybe_reseal(
                    bytes.fromhex(data["key_sealed"]), ACCOUNT_AAD, key, "ACME account keys"
                )
                if fresh is not None:
                    data["key_sealed"] = fresh.hex()
                    self._set_meta(key, json.dumps(data).encode())
        self._committed()

    def _meta_blobs(self) -> None:
        with self._transaction():
            for key, aad, what in SEALED_META:
                blob = self._meta(key)
                if blob is not None:
                    fresh = self._maybe_reseal(blob, aad, key, what)
                    if fresh is not None:
                        self._set_meta(key, fresh)
        self._committed()

    def _committed(self) -> None:
        self.result.batches += 1
        if self._after_batch is not None:
            self._after_batch(self.result.batches)

    def _meta(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row is not None else None

    def _set_meta(self, key: str, value: bytes) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, ROLLBACK on any error: one batch is all or nothing."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._conn.execute("COMMIT" if kind is None else "ROLLBACK")
