"""Small domain and certificate records for store tests, and a raw look at the file."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certbroker.model import CertificateInfo, Domain, LetsEncryptState, Source

T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)


def make_domain(name: str, app: str = "app-a", **changes: object) -> Domain:
    base = Domain(
        name=name,
        app=app,
        letsencrypt_enabled=True,
        le_state=LetsEncryptState.PENDING_DNS,
        serving=Source.NONE,
        created_at=T0,
        updated_at=T0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def make_cert(name: str, serial: str = "01", not_before: datetime = T0) -> CertificateInfo:
    return CertificateInfo(
        id=0,
        sans=(name,),
        subject=f"CN={name}",
        issuer="CN=Test CA",
        serial=serial,
        not_before=not_before,
        not_after=not_before + timedelta(days=90),
        sha256_fingerprint=serial * 32,
        chain_pem=f"-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n",
        key_algorithm="ECDSA_P256",
    )


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read the file with a separate, plain connection: what is really on disk."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
