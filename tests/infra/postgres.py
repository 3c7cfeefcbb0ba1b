"""A throwaway PostgreSQL from Debian's ``postgresql-15``, on a free loopback port.

``initdb`` into a temporary directory, then the ``postgres`` server binary as our
own child process (``pg_ctl start`` would do the same but daemonise it; as a
child it is stopped by its PID like every other test server, see
``tests/infra/process.py``). ``initdb`` refuses to run as root, so as root both
run as the unprivileged ``postgres`` system user the package creates (or
``nobody``), through ``Popen(user=...)``: no ``su`` in between, so the PID we hold
is the server's own.

Durability is switched off (``fsync``, ``synchronous_commit``, full-page writes):
the data dies with the test session, and every commit would otherwise wait for
the disk on a machine shared by many test runs. One server serves a whole test
session; each test gets a database of its own (``create_database``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from tests.infra.ports import free_port
from tests.infra.process import ServerProcess

VERSION = 15
BIN = Path(f"/usr/lib/postgresql/{VERSION}/bin")
SUPERUSER = "postgres"


class PostgresError(RuntimeError):
    """The server did not start, or an administrative command failed."""


def available() -> bool:
    return (BIN / "initdb").is_file() and (BIN / "postgres").is_file()


def _run_as() -> str | None:
    """The unprivileged user to run as when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresError("running as root and no unprivileged user (postgres, nobody) exists")


class Postgres(ServerProcess):
    host = "127.0.0.1"

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None
        self._user = _run_as()
        self.port = 0

    @property
    def _dir(self) -> Path:
        if self._tmp is None:
            raise PostgresError("not started")
        return self._tmp

    @property
    def data_dir(self) -> Path:
        return self._dir / "data"

    @property
    def log_path(self) -> Path:
        return self._dir / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def start(self) -> Postgres:
        if self._proc is not None:
            raise PostgresError("already started")
        if not available():
            raise PostgresError(f"PostgreSQL {VERSION} is not installed under {BIN}")
        self._tmp = Path(tempfile.mkdtemp(prefix="postgres-"))
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self._tmp, entry.pw_uid, entry.pw_gid)
        self._initdb()
        last = ""
        for _ in range(3):  # the port may be taken between free_port() and the bind
            self.port = free_port(self.host)
            if self._launch():
                return self
            last = self.log_text()
            self._kill()
        self._cleanup()
        raise PostgresError(f"postgres did not start:\n{last}")

    def _as_user(self) -> dict[str, object]:
        if self._user is None:
            return {}
        return {"user": self._user, "group": pwd.getpwnam(self._user).pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        result = subprocess.run(
            [
                str(BIN / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            cwd=self._dir,
            check=False,
            timeout=120,
            **self._as_user(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            self._cleanup()
            raise PostgresError(f"initdb failed: {result.stdout!r} {result.stderr!r}")

    def _launch(self) -> bool:
        args = [
            str(BIN / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self._dir),  # the Unix socket lives with the data, not in /var/run
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=32MB",
        ]
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            self._proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self._dir,
                **self._as_user(),  # type: ignore[call-overload]
            )
        finally:
            os.close(log)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            ready = subprocess.run(
                [str(BIN / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                check=False,
                timeout=10,
            )
            if ready.returncode == 0:
                return True
            time.sleep(0.05)
        return False

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one administrative statement through ``psql``; returns its output."""
        result = subprocess.run(
            [
                str(BIN / "psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn(database),
                "-c",
                sql,
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise PostgresError(f"psql {sql!r}: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode()

    def create_database(self, prefix: str = "test") -> str:
        """A new, empty database; returns its DSN."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _kill(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, not waited for as SIGTERM would."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


async def create_database(server: Postgres, prefix: str = "test") -> str:
    """A new, empty database on ``server``; returns its DSN (faster than ``psql``)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.dsn(name)


async def drop_database(server: Postgres, dsn: str) -> None:
    """Drop the database of ``dsn``, ending any session still connected to it."""
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
