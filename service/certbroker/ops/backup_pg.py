"""``certbroker backup PATH`` on PostgreSQL: ``pg_dump --format=custom`` of one snapshot.

Why pg_dump rather than an export written here: it is PostgreSQL's own, kept
in step with every server version, dumps the schema (and ``schema_migrations``,
so a broker on the restored database migrates on from there) with the data,
and its custom format is compressed and restored selectively by
``pg_restore``, which operators already know. An export of our own would have
to re-implement all of that for one benefit (no client binary needed).

Consistency: the dump runs in a snapshot this command exports from a
``REPEATABLE READ`` transaction (``pg_dump --snapshot``), and the counts and
KEK ids printed are read in that same snapshot: they describe exactly what is
in the file, while brokers keep serving and writing.

The file is written to a temporary file (0600: it holds sealed keys and ACME
state) in the target's folder, verified with ``pg_restore --list`` (a complete
archive whose table of contents has the data of the broker's tables), synced,
and only then linked into place. The KEK is not in it: the ids printed name the
KEK files a restore needs (never the keys themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from certbroker.ops import OpsError
from certbroker.ops.backup import _publish
from certbroker.store.acme_account import META_PREFIX as ACCOUNT_PREFIX
from certbroker.store.factory import redact
from certbroker.x509.sealing import KEY_ID_BYTES, VERSION_2

CONNECT_TIMEOUT = 10.0
DUMP_TIMEOUT = 3600.0  # seconds; a dump that takes longer is stuck, not slow
#: Tables whose data a usable backup must hold (checked in pg_restore's list).
REQUIRED_TABLES = ("domains", "certificates", "events", "meta", "schema_migrations")
LEGACY = "legacy (no key id: the KEK that sealed the database before key ids)"


@dataclass(frozen=True)
class PostgresBackup:
    path: str
    size: int
    domains: int
    certificates: int
    revision: int
    #: ids of every KEK that sealed something in the snapshot (the canary's first)
    kek_ids: tuple[str, ...]


def find_tool(name: str, flag: str | None) -> str:
    """``flag`` if given, else ``name`` on PATH; ``OpsError`` saying how to get it."""
    found = shutil.which(flag or name)
    if found is None:
        given = f"--{name.replace('_', '-')} {flag}" if flag else f"{name} is not on PATH"
        raise OpsError(
            f"{given}: not found; install the PostgreSQL client (Debian: postgresql-client, "
            f"the server's major version or newer) or pass --{name.replace('_', '-')} PATH"
        )
    return found


def backup_postgres(
    dsn: str, dest: str, *, force: bool = False, pg_dump: str | None = None
) -> PostgresBackup:
    """Dump the database at ``dsn`` to ``dest``; refuses to overwrite unless ``force``."""
    if os.path.isdir(dest):
        raise OpsError(f"{dest} is a directory; give the backup file's path")
    if os.path.lexists(dest) and not force:
        raise OpsError(f"{dest} already exists; pass --force to overwrite it")
    dump = find_tool("pg_dump", pg_dump)
    restore = shutil.which("pg_restore", path=os.path.dirname(dump)) or find_tool(
        "pg_restore", None
    )
    folder = os.path.dirname(os.path.abspath(dest))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".certbroker-backup-", suffix=".tmp", dir=folder)
    except OSError as error:
        raise OpsError(f"cannot write in {folder}: {error.strerror or error}") from None
    os.close(fd)  # 0600 from mkstemp; pg_dump writes into the existing file, keeping it
    try:
        found = asyncio.run(_dump(dsn, dump, tmp))
        _verify(restore, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        _publish(tmp, dest, force)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return PostgresBackup(dest, os.path.getsize(dest), *found)


async def _dump(dsn: str, pg_dump: str, tmp: str) -> Inventory:
    where = f"CERTBROKER_DB={redact(dsn)}"
    try:
        conn = await asyncpg.connect(
            dsn,
            timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": "certbroker backup"},
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise OpsError(f"{where}: cannot connect: {_one_line(error)}") from None
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            try:
                found = await _inventory(conn)
            except asyncpg.UndefinedTableError:
                raise OpsError(
                    f"{where}: not a certbroker database (no certbroker tables)"
                ) from None
            await _run_pg_dump(pg_dump, dsn, snapshot, tmp, where)
        return found
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise OpsError(f"{where}: backup failed: {_one_line(error)}") from None
    finally:
        try:
            await asyncio.wait_for(conn.close(), 5)
        except Exception:
            conn.terminate()


Inventory = tuple[int, int, int, tuple[str, ...]]  # domains, certificates, revision, KEK ids


async def _inventory(conn: asyncpg.Connection[asyncpg.Record]) -> Inventory:
    """Counts, revision and the KEK ids of every sealed blob, in the dump's snapshot."""
    domains = await conn.fetchval("SELECT count(*) FROM domains")
    certificates = await conn.fetchval("SELECT count(*) FROM certificates")
    revision = await conn.fetchval("SELECT value FROM revision_counter WHERE id = 1")
    heads: list[bytes] = []
    for table in ("certificates", "orders"):
        rows = await conn.fetch(
            f"SELECT DISTINCT substring(key_sealed FROM 1 FOR {1 + KEY_ID_BYTES}) FROM {table}"  # noqa: S608 (fixed names)
        )
        heads.extend(bytes(row[0]) for row in rows)
    for key, value in await conn.fetch(
        "SELECT key, value FROM meta WHERE key IN ('kek_canary', 'dns01_label_secret') "
        "OR key LIKE $1 ORDER BY key <> 'kek_canary', key",
        f"{ACCOUNT_PREFIX}:%",
    ):
        blob = bytes(value)
        if key.startswith(f"{ACCOUNT_PREFIX}:"):
            blob = bytes.fromhex(json.loads(blob)["key_sealed"])
        heads.insert(0, blob) if key == "kek_canary" else heads.append(blob)
    ids: list[str] = []
    for head in heads:
        kek = head[1 : 1 + KEY_ID_BYTES].hex() if head[:1] == bytes([VERSION_2]) else LEGACY
        if kek not in ids:
            ids.append(kek)
    return int(domains), int(certificates), int(revision), tuple(ids)


def _libpq_target(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password (command lines are visible to every local user),
    and the environment that gives pg_dump the password instead.

    The URL's password is percent-encoded (as libpq and asyncpg read it) but
    ``PGPASSWORD`` is taken literally, so it is decoded here; a ``password=`` query
    parameter (which asyncpg and libpq also accept) is moved out of the URL too.
    """
    parts = urlsplit(dsn)
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    query = parse_qsl(parts.query, keep_blank_values=True)
    in_query = [v for k, v in query if k == "password"]
    if parts.password is None and not in_query:
        return dsn, env
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}@{host}" if parts.username else host
    env["PGPASSWORD"] = in_query[-1] if in_query else unquote(parts.password or "")
    rest = urlencode([(k, v) for k, v in query if k != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=rest)), env


async def _run_pg_dump(pg_dump: str, dsn: str, snapshot: str, tmp: str, where: str) -> None:
    target, env = _libpq_target(dsn)
    proc = await asyncio.create_subprocess_exec(
        pg_dump,
        "--format=custom",
        f"--snapshot={snapshot}",
        "--no-password",  # never prompt: a cron job would hang
        f"--file={tmp}",
        f"--dbname={target}",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), DUMP_TIMEOUT)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        detail = _last_lines(err)
        raise OpsError(f"{where}: pg_dump failed (exit {proc.returncode}): {detail}")


def _verify(pg_restore: str, path: str) -> None:
    """The archive reads back whole, and its table of contents has the tables' data."""
    result = subprocess.run(
        [pg_restore, "--list", path], capture_output=True, check=False, timeout=600
    )
    if result.returncode != 0:
        detail = _last_lines(result.stderr)
        raise OpsError(f"the dump failed its check (pg_restore --list): {detail}")
    listing = result.stdout.decode(errors="replace")
    missing = [t for t in REQUIRED_TABLES if not re.search(rf" TABLE DATA \S+ {t} ", listing)]
    if missing:
        raise OpsError(f"the dump failed its check: no data for table(s) {', '.join(missing)}")


def _last_lines(raw: bytes) -> str:
    lines = [line.strip() for line in raw.decode(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-3:])[:500] or "no message"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
