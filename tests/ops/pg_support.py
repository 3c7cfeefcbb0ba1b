"""A PostgreSQL broker database holding every kind of sealed secret, and reading them back."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from certbroker.clock import FakeClock
from certbroker.config import Settings
from certbroker.x509.sealing import KeySealer
from tests.broker import broker_settings, started_broker
from tests.ops.support import PKI, add_custom, trust_file
from tests.pki import NOW

Blobs = dict[tuple[str, str], bytes]  # (where, row) -> plaintext
CERTS = 5
ORDERS = 2


def pg_settings(tmp_path: Path, dsn: str, **overrides: object) -> Settings:
    return broker_settings(tmp_path, db=dsn, trust_bundle=str(trust_file(tmp_path)), **overrides)


async def populated(tmp_path: Path, dsn: str) -> tuple[Settings, KeySealer, Blobs]:
    """Custom certificates uploaded through a real broker on ``dsn`` (stopped again), plus
    order keys and an ACME account key sealed as the broker seals them."""
    settings = pg_settings(tmp_path, dsn, broker_id="broker-a")
    async with started_broker(settings, FakeClock(NOW)) as broker:
        for i in range(CERTS):
            await add_custom(broker.stub, f"c{i}.example.com")
    old = KeySealer.load(settings.kek_file)
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(ORDERS):
            name = f"o{i}.example.com"
            await conn.execute(
                "INSERT INTO orders (domain, registered_domain, names_key, names_json, "
                "key_sealed, started_at) VALUES ($1, 'example.com', $1, $2, $3, 0)",
                name,
                json.dumps([name]),
                old.seal(f"order key {i}".encode(), name),
            )
        account = {"key_sealed": old.seal(b"account key", "certbroker:acme-account").hex()}
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2)",
            "acme_account:https://ca.example/dir",
            json.dumps({**account, "url": "u"}).encode(),
        )
    finally:
        await conn.close()
    plain = await open_all(dsn, old)
    assert len(plain) == CERTS + ORDERS + 3  # + account, canary, label secret
    return settings, old, plain


async def blobs(dsn: str) -> dict[tuple[str, str], tuple[bytes, str]]:
    """Every sealed blob in the database with the name it is bound to."""
    found: dict[tuple[str, str], tuple[bytes, str]] = {}
    conn = await asyncpg.connect(dsn)
    try:
        for row in await conn.fetch("SELECT id, domain, key_sealed FROM certificates"):
            found[("certificate", str(row[0]))] = (bytes(row[2]), row[1])
        for row in await conn.fetch("SELECT domain, key_sealed FROM orders"):
            found[("order", row[0])] = (bytes(row[1]), row[0])
        for key, value in await conn.fetch("SELECT key, value FROM meta WHERE key LIKE 'acme_%'"):
            sealed = bytes.fromhex(json.loads(value)["key_sealed"])
            found[("account", key)] = (sealed, "certbroker:acme-account")
        canary = await conn.fetchval("SELECT value FROM meta WHERE key = 'kek_canary'")
        found[("canary", "")] = (bytes(canary), "certbroker:kek-canary")
        label = await conn.fetchval("SELECT value FROM meta WHERE key = 'dns01_label_secret'")
        found[("label secret", "")] = (bytes(label), "certbroker:dns01-label-secret")
    finally:
        await conn.close()
    return found


async def open_all(dsn: str, sealer: KeySealer) -> Blobs:
    return {where: sealer.open(blob, aad) for where, (blob, aad) in (await blobs(dsn)).items()}


async def key_ids(dsn: str) -> set[str | None]:
    return {KeySealer.blob_key_id(blob) for blob, _ in (await blobs(dsn)).values()}


async def assert_serves_the_keys(settings: Settings, names: list[str]) -> None:
    """A broker started with ``settings`` opens each domain's key: the uploaded one."""
    async with started_broker(settings, FakeClock(NOW)) as broker:
        for name in names:
            record = await broker.running.store.get_domain(name)
            assert record is not None, name
            material = await broker.running.broker.serving_material(record)
            assert material is not None, name
            assert material.private_key_pem.encode() == PKI.leaf(name).key_pem()
