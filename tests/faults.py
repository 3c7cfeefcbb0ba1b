"""A full disk for the real SQLite store, injected where SQLite itself would fail.

In WAL mode the pages of a transaction reach the disk at COMMIT, so that is where
a full disk shows: ``sqlite3.OperationalError("database or disk is full")`` with
result code SQLITE_FULL, the transaction still open. ``FullDisk`` wraps the
store's writer connection (``SqliteStore.open(wrap_writer=...)``) and raises
exactly that from ``commit`` while ``full`` is set; every other call, rollback
included, reaches the real connection, so what the store does after the failure
is real.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import aiosqlite

from certbroker.store.sqlite import SqliteStore


def disk_full_error() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    error.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    return error


class _Writer:
    def __init__(self, conn: aiosqlite.Connection, disk: FullDisk) -> None:
        self._conn = conn
        self._disk = disk
        self._inserted_certificate = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, parameters: Any = None) -> Any:
        if sql.lstrip().upper().startswith("INSERT INTO CERTIFICATES"):
            self._inserted_certificate = True
        return self._conn.execute(sql, parameters)

    async def commit(self) -> None:
        self._disk.commits += 1
        certificate, self._inserted_certificate = self._inserted_certificate, False
        if self._disk.full or (certificate and self._disk.fail_certificate_commits > 0):
            if certificate and self._disk.fail_certificate_commits > 0:
                self._disk.fail_certificate_commits -= 1
            self._disk.failed_commits += 1
            self._inserted_certificate = certificate  # still in the open transaction
            raise disk_full_error()
        await self._conn.commit()

    async def rollback(self) -> None:
        self._inserted_certificate = False
        await self._conn.rollback()


class FullDisk:
    """Switch ``full`` on and off; ``fail_certificate_commits`` fails only commits that
    store a certificate (issued by the CA, lost on the way to the disk)."""

    def __init__(self) -> None:
        self.full = False
        self.fail_certificate_commits = 0
        self.commits = 0
        self.failed_commits = 0

    def wrap(self, conn: aiosqlite.Connection) -> aiosqlite.Connection:
        return _Writer(conn, self)  # type: ignore[return-value]

    async def open(self, path: str) -> SqliteStore:
        """``SqliteStore.open`` with this disk under the writer (for ``run(open_store=...)``)."""
        return await SqliteStore.open(path, wrap_writer=self.wrap)
