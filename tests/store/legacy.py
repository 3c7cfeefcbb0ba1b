"""Databases as older brokers left them, for upgrade tests.

Built with the very migration files the package ships, so each is the schema an
old broker wrote, and filled with plain SQL, not the new code: schema 002 with
``LegacyDomain`` rows (``schema_002_database``), or any schema on either backend
(``sqlite_before``, ``postgres_before``) for a test to fill.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import asyncpg

from certbroker import delegation
from tests.store.backends import numbered


@dataclass(frozen=True)
class LegacyDomain:
    name: str
    app: str
    challenge: str  # DNS_01 | HTTP_01
    created_at: datetime
    include_apex: bool = False
    next_run_at: datetime | None = None


def _micros(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


def schema_002_database(path: Path, domains: list[LegacyDomain]) -> None:
    """Create ``path`` at schema version 2 holding ``domains`` (opted in, nothing issued)."""
    folder = resources.files("certbroker.store") / "migrations"
    scripts = sorted(e for e in folder.iterdir() if e.name[:4] in ("001_", "002_"))
    assert [s.name[:3] for s in scripts] == ["001", "002"]
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)"
        )
        for version, script in enumerate(scripts, start=1):
            conn.executescript(script.read_text())
            conn.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (version,))
        for revision, d in enumerate(domains, start=1):
            conn.execute(
                "INSERT INTO domains (name, app, letsencrypt_enabled, le_state, serving, "
                "key_algorithm, challenge, next_run_at, include_apex, revision, created_at, "
                "updated_at) "
                "VALUES (?, ?, 1, 'PENDING_DNS', 'NONE', 'ECDSA_P256', ?, ?, ?, ?, ?, ?)",
                (
                    d.name,
                    d.app,
                    d.challenge,
                    _micros(d.next_run_at) if d.next_run_at else None,
                    int(d.include_apex),
                    revision,
                    _micros(d.created_at),
                    _micros(d.created_at),
                ),
            )
        conn.commit()
    finally:
        conn.close()


def _scripts(folder: str, version: int) -> list[str]:
    """The shipped migration scripts numbered below ``version``, in order."""
    found = resources.files("certbroker.store").joinpath(*folder.split("/")).iterdir()
    scripts = sorted((e for e in found if e.name.endswith(".sql")), key=lambda e: e.name)
    return [e.read_text() for e in scripts if int(e.name[:3]) < version]


Rows = Sequence[tuple[str, tuple[object, ...]]]


def sqlite_before(path: Path, version: int, rows: Rows) -> None:
    """Create ``path`` at the schema just before migration ``version``, holding ``rows``.

    ``rows``: statements with ``?`` placeholders and their parameters.
    """
    conn = sqlite3.connect(path)
    try:
        conn.create_function("certbroker_legacy_label", 1, delegation.legacy_label)  # 003
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)"
        )
        for number, script in enumerate(_scripts("migrations", version), start=1):
            conn.executescript(script)
            conn.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (number,))
        for sql, params in rows:
            conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


async def postgres_before(dsn: str, version: int, rows: Rows) -> None:
    """The empty database ``dsn`` at the schema just before migration ``version``, with ``rows``."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for number, script in enumerate(_scripts("migrations/postgres", version), start=1):
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)
        for sql, params in rows:
            await conn.execute(numbered(sql), *params)
    finally:
        await conn.close()
