"""The operator verbs behind ``certbroker backup|rotate-kek|generate-kek``.

On PostgreSQL (``postgresql://…``) backup is a ``pg_dump`` (``ops/backup_pg.py``)
and rotate-kek one transaction with every broker stopped (``ops/rotate_pg.py``);
both modules load asyncpg, so they are imported only for such a database.

Each returns the lines to print and raises ``OpsError`` (or ``KekError``) with
one line to show; the CLI owns parsing and exit codes. Paths default like the
broker's own settings (``CERTBROKER_DB``, ``CERTBROKER_KEK_FILE``), so the
command finds the database the broker uses without repeating it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from certbroker.config import Settings
from certbroker.ops import OpsError
from certbroker.ops.backup import backup
from certbroker.ops.rotate import DEFAULT_BATCH, rotate_kek
from certbroker.store.factory import Location, parse, redact
from certbroker.x509.sealing import KekError, KeySealer


def database_path(flag: str | None, env: Mapping[str, str] | None = None) -> Location:
    """``--db``, else ``CERTBROKER_DB``, else the broker's default: a SQLite file or PostgreSQL."""
    source = os.environ if env is None else env
    raw = flag or source.get("CERTBROKER_DB", "").strip() or Settings().db
    try:
        return parse(raw)
    except ValueError as error:
        raise OpsError(f"--db {redact(raw)}: {error}") from None


def kek_path(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """``--kek``, else ``CERTBROKER_KEK_FILE``, else the broker's default."""
    source = os.environ if env is None else env
    return flag or source.get("CERTBROKER_KEK_FILE", "").strip() or Settings().kek_file


def backup_command(
    db: Location | str, path: str, *, force: bool, pg_dump: str | None = None
) -> list[str]:
    db = _located(db)
    if db.backend == "postgresql":
        return _postgres_backup(db, path, force=force, pg_dump=pg_dump)
    if pg_dump is not None:
        raise OpsError(f"--pg-dump is for a PostgreSQL database; --db {db.target} is SQLite")
    result = backup(db.target, path, force=force)
    kek = f"KEK id {result.kek_id}" if result.kek_id else "the broker's KEK"
    return [
        f"backup written to {result.path} ({result.domains} domains, "
        f"{result.certificates} certificates, {result.size // 1024} KiB, mode 0600)",
        f"the key-encryption key is NOT in the backup: keep a copy of the KEK file ({kek}) "
        "separately; without it no private key in this backup can be opened",
    ]


def _postgres_backup(db: Location, path: str, *, force: bool, pg_dump: str | None) -> list[str]:
    from certbroker.ops.backup_pg import backup_postgres

    result = backup_postgres(db.target, path, force=force, pg_dump=pg_dump)
    keks = ", ".join(result.kek_ids) or "none (nothing sealed yet)"
    return [
        f"backup written to {result.path} (pg_dump custom format, {result.domains} domains, "
        f"{result.certificates} certificates, revision {result.revision}, "
        f"{result.size // 1024} KiB, mode 0600; checked with pg_restore --list)",
        f"KEK ids it needs: {keks}; the key-encryption key is NOT in the backup: keep the "
        "KEK file(s) with those ids separately; without them no private key in it can be opened",
        f"restore into a new, empty database: pg_restore --no-owner --exit-on-error "
        f"--dbname=postgresql://…/NEWDB {result.path}",
    ]


def generate_kek_command(path: str) -> list[str]:
    KeySealer.generate_file(path)
    sealer = KeySealer.load(path)
    return [f"created {path} (KEK id {sealer.key_id}, mode 0600); back it up"]


def rotate_kek_command(
    db: Location | str,
    kek_file: str,
    new_kek_file: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    after_batch: Callable[[int], None] | None = None,
) -> list[str]:
    db = _located(db)
    current = _load(kek_file, "--kek")
    new = _load(new_kek_file, "--new-kek")
    if db.backend == "postgresql":
        from certbroker.ops.rotate_pg import rotate_kek_postgres

        result = rotate_kek_postgres(db.target, current, new)
        done = ", ".join(f"{n} {what}" for what, n in result.resealed.items()) or "nothing"
        return [
            f"re-sealed {done} under KEK id {result.new_key_id} in one transaction "
            f"({result.already_new} already were); the KEK canary now names it",
            f"next: start every broker with CERTBROKER_KEK_FILE={new_kek_file}, take a backup "
            "(certbroker backup); keep the old key file until then",
        ]
    result = rotate_kek(db.target, current, new, batch_size=batch_size, after_batch=after_batch)
    done = ", ".join(f"{n} {what}" for what, n in result.resealed.items()) or "nothing"
    return [
        f"re-sealed {done} under KEK id {result.new_key_id} "
        f"({result.already_new} already were); the KEK canary now names it",
        f"next: set CERTBROKER_KEK_FILE={new_kek_file}, start the broker, take a backup; "
        f"keep the old key file until then",
    ]


def _located(db: Location | str) -> Location:
    """A location as given, or a SQLite path/URL string (as tests and scripts pass one)."""
    return db if isinstance(db, Location) else database_path(db)


def _load(path: str, flag: str) -> KeySealer:
    try:
        return KeySealer.load(path)
    except KekError as error:
        raise OpsError(f"{flag}: {error}") from None
