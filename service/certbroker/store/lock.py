"""One process owns a database at a time: an advisory lock file beside it.

Why: ``certbroker rotate-kek`` re-seals every key while the broker is stopped
(a running broker holds only the old KEK and could not open what the rotation
re-sealed), and two brokers on one SQLite file would both run schedulers and
order the same certificates twice. SQLite's own locks cannot say "someone is
serving this file" in WAL mode (readers and a writer coexist), so the serving
broker and the rotation each hold ``flock`` on ``DB.lock``; the kernel drops it
when the process dies, so a crash never leaves a stale lock behind. Backups do
not take it: SQLite's online backup is safe beside a running broker.

The lock file is separate from the database on purpose: SQLite's POSIX locks on
the database file are dropped when any descriptor of it is closed in the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os


class DatabaseBusy(Exception):
    """Another process holds the database; the message says which."""


class DatabaseLock:
    """Held from :meth:`acquire` to :meth:`release` (or until the process ends)."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, db_path: str, holder: str) -> DatabaseLock | None:
        """Lock ``db_path``'s lock file for ``holder`` (e.g. "certbroker serve").

        Returns None for an in-memory database. Raises ``DatabaseBusy`` naming the
        current holder, or ``OSError`` when the lock file cannot be created (the
        database's directory is unwritable: the database could not be either).
        """
        if db_path == ":memory:":
            return None
        path = f"{db_path}.lock"
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, 0o700, exist_ok=True)  # as the store makes it: private
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DatabaseBusy(f"the database is in use by {owner}") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} (pid {os.getpid()})\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock

    async def stop(self) -> None:
        """So a started broker can release it with its other parts."""
        self.release()
