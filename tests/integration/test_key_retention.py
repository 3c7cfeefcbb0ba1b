"""Retired keys are erased a retention after they stop serving; current and standby keys stay.

Through the real server on an injected clock, with a real Let's Encrypt
certificate from Pebble: a replaced custom certificate, a deleted one and a
renewed Let's Encrypt one each lose their row and sealed key once
``CERTBROKER_KEY_RETENTION`` (default 7 days) has passed and compaction runs,
while the certificate serving and the warm standby keep theirs and a router
still gets working material. What is checked is the database file itself.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certbroker.clock import FakeClock
from certbroker.housekeeping import Compactor
from certbroker.model import Source
from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import BrokerHandle, started_broker
from tests.integration.lab import Lab, in_use, unique_domain, wait_status
from tests.pki import TestPKI

PKI = TestPKI("Retention")
WEEK = timedelta(days=7)
MINUTE = timedelta(minutes=1)
CUSTOM = domain_pb2.CERTIFICATE_SOURCE_CUSTOM
LETS_ENCRYPT = domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT


def stored_keys(db: str, name: str) -> dict[str, int]:
    """Serial → length of the sealed key, for every certificate row of ``name`` on disk."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT serial, length(key_sealed) FROM certificates WHERE domain = ?", (name,)
        ).fetchall()
    finally:
        conn.close()
    return {str(serial): int(size) for serial, size in rows if size}


async def compact(broker: BrokerHandle) -> None:
    """One compaction run now (the broker's own also wakes when the clock moves)."""
    compactors = [e for e in broker.running.extras if isinstance(e, Compactor)]
    assert len(compactors) == 1
    await compactors[0].compact_once()


async def upload(broker: BrokerHandle, name: str, now: datetime) -> domain_pb2.Domain:
    leaf = PKI.leaf(name, not_before=now - timedelta(days=1), not_after=now + timedelta(days=120))
    reply = await broker.stub.UploadCustom(
        broker_pb2.UploadCustomRequest(
            domain=name, app="shop", certificate=PKI.bundle(leaf), private_key=leaf.key_pem()
        )
    )
    return reply.domain


async def served_key_matches(broker: BrokerHandle, name: str, source: Source) -> None:
    """A router told to serve ``name`` gets the certificate and its key, decrypted."""
    record = await broker.running.store.get_domain(name)
    assert record is not None
    material = await broker.running.broker.serving_material(record)
    assert material is not None and material.source is source
    key = serialization.load_pem_private_key(material.private_key_pem.encode(), None)
    leaf = x509.load_pem_x509_certificates(material.chain_pem.encode())[0]
    assert key.public_key() == leaf.public_key()


async def test_retired_keys_go_after_the_retention_while_serving_and_standby_keys_stay(
    lab: Lab, tmp_path: Path
) -> None:
    name = unique_domain()
    trust = tmp_path / "trust.pem"
    trust.write_bytes(PKI.root.pem)
    settings = lab.settings(tmp_path, trust_bundle=str(trust))
    assert settings.key_retention == WEEK  # the default is what is tested
    # a minute ahead of Pebble, so its certificates are already valid on this clock
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + MINUTE)
    async with started_broker(settings, clock) as broker:
        stub = broker.stub
        await stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="shop"))
        issued = await wait_status(stub, name, in_use)
        le1 = issued.lets_encrypt_certificate.serial

        first = (await upload(broker, name, clock.now())).custom_certificate.serial
        replaced = await upload(broker, name, clock.now())  # the first custom one retires
        second = replaced.custom_certificate.serial
        assert replaced.serving_source == CUSTOM
        assert replaced.lets_encrypt_certificate.serial == le1  # the warm standby
        assert set(stored_keys(settings.db, name)) == {le1, first, second}

        clock.advance(WEEK - MINUTE)
        await compact(broker)
        assert set(stored_keys(settings.db, name)) == {le1, first, second}  # still in grace
        clock.advance(2 * MINUTE)
        await compact(broker)
        assert set(stored_keys(settings.db, name)) == {le1, second}  # standby and serving stay
        await served_key_matches(broker, name, Source.CUSTOM)

        deleted = await stub.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name, app="shop"))
        assert deleted.domain.serving_source == LETS_ENCRYPT
        clock.advance(WEEK + MINUTE)
        await compact(broker)
        assert set(stored_keys(settings.db, name)) == {le1}  # the deleted custom key is gone
        await served_key_matches(broker, name, Source.LETS_ENCRYPT)

        clock.set(deleted.domain.renewal_time.ToDatetime(UTC))
        renewed = await wait_status(
            stub, name, lambda d: d.lets_encrypt_certificate.serial not in ("", le1)
        )
        le2 = renewed.lets_encrypt_certificate.serial
        await compact(broker)
        assert set(stored_keys(settings.db, name)) == {le1, le2}
        clock.advance(WEEK + MINUTE)
        await compact(broker)
        assert set(stored_keys(settings.db, name)) == {le2}  # the renewed-away key is gone
        await served_key_matches(broker, name, Source.LETS_ENCRYPT)
        final = (await stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))).domain
        assert (final.lets_encrypt_certificate.serial, final.serving_source) == (le2, LETS_ENCRYPT)
