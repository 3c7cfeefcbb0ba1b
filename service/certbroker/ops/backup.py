"""``certbroker backup PATH``: a consistent copy of a live database.

SQLite's online backup API copies the database as of one read transaction: in
WAL mode that reader never blocks the broker's writer, so it is safe while the
broker serves, and the copy is one committed state (never half a transaction).
It is copied in a single step on purpose: a step-wise backup restarts whenever
another connection writes between steps, which under steady writes may never end.

The copy is written to a temporary file (mode 0600: it holds sealed keys and
ACME state) in the target's folder, checked with ``PRAGMA integrity_check``,
switched to a self-contained rollback journal, synced, and only then linked
into place, so PATH is either absent or a complete, checked backup.

The key-encryption key is NOT in the backup (that is the point of sealing):
restoring needs the same KEK file, which must be backed up separately.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from urllib.parse import quote

from certbroker.ops import OpsError
from certbroker.x509.sealing import KeySealer

CANARY_META = "kek_canary"


@dataclass(frozen=True)
class BackupResult:
    path: str
    size: int
    domains: int
    certificates: int
    #: The KEK that sealed the database (from the canary), None for legacy blobs.
    kek_id: str | None


def backup(db: str, dest: str, *, force: bool = False) -> BackupResult:
    """Copy the database at ``db`` to ``dest``; refuses to overwrite unless ``force``."""
    if not os.path.isfile(db):
        raise OpsError(f"CERTBROKER_DB={db}: no such database file")
    if os.path.lexists(dest) and not force:
        raise OpsError(f"{dest} already exists; pass --force to overwrite it")
    if os.path.isdir(dest):
        raise OpsError(f"{dest} is a directory; give the backup file's path")
    folder = os.path.dirname(os.path.abspath(dest))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".certbroker-backup-", suffix=".tmp", dir=folder)
    except OSError as error:
        raise OpsError(f"cannot write in {folder}: {error.strerror or error}") from None
    os.close(fd)  # mkstemp made it 0600; SQLite writes into the existing (empty) file
    try:
        result = _copy(db, tmp)
        _publish(tmp, dest, force)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return BackupResult(dest, os.path.getsize(dest), *result)


def _copy(db: str, tmp: str) -> tuple[int, int, str | None]:
    try:
        # mode=ro: the backup never writes to the live database, nor creates it.
        source = sqlite3.connect(f"file:{quote(os.path.abspath(db))}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise OpsError(f"CERTBROKER_DB={db}: cannot open: {error}") from None
    try:
        source.execute("PRAGMA busy_timeout=10000")
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)  # pages=-1: the whole database in one read transaction
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            check = target.execute("PRAGMA integrity_check").fetchall()
            if check != [("ok",)]:
                raise OpsError(f"the copy failed its integrity check: {check[:3]}")
            domains = _count(target, "domains")
            certificates = _count(target, "certificates")
            row = target.execute("SELECT value FROM meta WHERE key = ?", (CANARY_META,))
            canary = row.fetchone()
        finally:
            target.close()
    except sqlite3.DatabaseError as error:
        raise OpsError(f"CERTBROKER_DB={db}: backup failed: {error}") from None
    finally:
        source.close()
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    kek_id = KeySealer.blob_key_id(bytes(canary[0])) if canary else None
    return domains, certificates, kek_id


def _count(conn: sqlite3.Connection, table: str) -> int:
    row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608 (fixed names)
    return int(row[0])


def _publish(tmp: str, dest: str, force: bool) -> None:
    """Move the checked copy into place; without ``force`` never replace a file."""
    if force:
        os.replace(tmp, dest)
    else:
        try:
            os.link(tmp, dest)  # fails if dest appeared meanwhile, unlike rename
        except FileExistsError:
            raise OpsError(f"{dest} already exists; pass --force to overwrite it") from None
        os.unlink(tmp)
    folder = os.open(os.path.dirname(os.path.abspath(dest)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
