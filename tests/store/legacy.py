"""A database as brokers before migration 003 left it (schema 002), for upgrade tests.

Built with the very migration files 001 and 002 the package ships, so it is
the schema an old broker wrote, and filled with plain SQL, not the new code.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path


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
