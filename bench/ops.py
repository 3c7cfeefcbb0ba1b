"""How long do ``certbroker backup`` and ``certbroker rotate-kek`` take on a large database?

Why: both run on production databases; an operator needs to know whether a
backup of 100,000 domains is seconds or minutes, and how long the broker must
stay stopped for a KEK rotation. This builds a database with ``--domains``
certificate rows (each a 1.4 kB chain and a sealed key of realistic size) and as
many watch events, then prints the backup's duration and size and the rotation's
duration and rate (sealed blobs re-sealed per second) at the default batch size.

Run from the repository root::

    .venv/bin/python bench/ops.py [--domains 20000] [--batch-size 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time

# bench/ is on sys.path when this file runs as a script.
from _common import machine_info

from certbroker.ops.backup import backup
from certbroker.ops.rotate import DEFAULT_BATCH, rotate_kek
from certbroker.store.sqlite import SqliteStore
from certbroker.x509.sealing import CANARY_AAD, KeySealer

KEY_BYTES = 241  # a PKCS#8 PEM P-256 key


def build(db: str, sealer: KeySealer, domains: int) -> None:
    asyncio.run(_migrate(db))
    key = b"k" * KEY_BYTES
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('kek_canary', ?)",
            (sealer.seal(b"canary", CANARY_AAD),),
        )
        rows = []
        for i in range(domains):
            name = f"d{i}.example.com"
            rows.append((i + 1, name, "CUSTOM", "-----BEGIN CERTIFICATE-----\n" + "A" * 1400, name))
        conn.executemany(
            "INSERT INTO certificates (id, domain, source, chain_pem, key_sealed, sans_json, "
            "subject, issuer, serial, not_before, not_after, fingerprint, key_algorithm, "
            "created_at) VALUES (?, ?, ?, ?, ?, '[]', 'CN=x', 'CN=ca', '01', 0, 1, 'f', 'p256', 0)",
            [(r[0], r[1], r[2], r[3], sealer.seal(key, r[4])) for r in rows],
        )
        conn.executemany(
            "INSERT INTO events (type, domain, payload, at) VALUES ('DOMAIN_UPDATED', ?, ?, 0)",
            [(r[1], "{" + '"x": 1,' * 40 + '"y": 2}') for r in rows],
        )


async def _migrate(db: str) -> None:
    store = await SqliteStore.open(db)
    await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    args = parser.parse_args()
    print(machine_info())
    with tempfile.TemporaryDirectory(prefix="certbroker-bench-ops-") as tmp:
        db = os.path.join(tmp, "broker.sqlite3")
        old, new = KeySealer(os.urandom(32)), KeySealer(os.urandom(32))
        started = time.perf_counter()
        build(db, old, args.domains)
        print(f"built {args.domains} certificates in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        result = backup(db, os.path.join(tmp, "broker.backup"))
        took = time.perf_counter() - started
        print(
            f"backup: {took:.2f} s for {result.size / 1e6:.1f} MB "
            f"({result.size / 1e6 / took:.0f} MB/s, {result.certificates} certificates)"
        )

        started = time.perf_counter()
        rotation = rotate_kek(db, old, new, batch_size=args.batch_size)
        took = time.perf_counter() - started
        sealed = sum(rotation.resealed.values())
        print(
            f"rotate-kek: {took:.2f} s for {sealed} blobs in {rotation.batches} batches of "
            f"{args.batch_size} ({sealed / took:,.0f} blobs/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
