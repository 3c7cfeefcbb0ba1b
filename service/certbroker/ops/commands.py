"""The operator verbs behind ``certbroker backup|rotate-kek|generate-kek``.

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
from certbroker.store.factory import parse, redact
from certbroker.x509.sealing import KekError, KeySealer


def database_path(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """``--db``, else ``CERTBROKER_DB``, else the broker's default: a SQLite file's path."""
    source = os.environ if env is None else env
    raw = flag or source.get("CERTBROKER_DB", "").strip() or Settings().db
    try:
        location = parse(raw)
    except ValueError as error:
        raise OpsError(f"--db {redact(raw)}: {error}") from None
    if location.backend == "postgresql":
        raise OpsError(
            f"--db {location.describe()} is PostgreSQL: these verbs work on a SQLite file; "
            "back PostgreSQL up with pg_dump (the KEK file separately)"
        )
    return location.target


def kek_path(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """``--kek``, else ``CERTBROKER_KEK_FILE``, else the broker's default."""
    source = os.environ if env is None else env
    return flag or source.get("CERTBROKER_KEK_FILE", "").strip() or Settings().kek_file


def backup_command(db: str, path: str, *, force: bool) -> list[str]:
    result = backup(db, path, force=force)
    kek = f"KEK id {result.kek_id}" if result.kek_id else "the broker's KEK"
    return [
        f"backup written to {result.path} ({result.domains} domains, "
        f"{result.certificates} certificates, {result.size // 1024} KiB, mode 0600)",
        f"the key-encryption key is NOT in the backup: keep a copy of the KEK file ({kek}) "
        "separately; without it no private key in this backup can be opened",
    ]


def generate_kek_command(path: str) -> list[str]:
    KeySealer.generate_file(path)
    sealer = KeySealer.load(path)
    return [f"created {path} (KEK id {sealer.key_id}, mode 0600); back it up"]


def rotate_kek_command(
    db: str,
    kek_file: str,
    new_kek_file: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    after_batch: Callable[[int], None] | None = None,
) -> list[str]:
    current = _load(kek_file, "--kek")
    new = _load(new_kek_file, "--new-kek")
    result = rotate_kek(db, current, new, batch_size=batch_size, after_batch=after_batch)
    done = ", ".join(f"{n} {what}" for what, n in result.resealed.items()) or "nothing"
    return [
        f"re-sealed {done} under KEK id {result.new_key_id} "
        f"({result.already_new} already were); the KEK canary now names it",
        f"next: set CERTBROKER_KEK_FILE={new_kek_file}, start the broker, take a backup; "
        f"keep the old key file until then",
    ]


def _load(path: str, flag: str) -> KeySealer:
    try:
        return KeySealer.load(path)
    except KekError as error:
        raise OpsError(f"{flag}: {error}") from None
