"""Brokers on one store share one ACME account, so one resumes the order another placed.

Three issuers, each with its own PostgreSQL store on one database (three brokers),
start together on a new database: they register one account. Then an order one
of them placed (and "died" right after persisting) is resumed by another; Pebble
validates it through a third broker's responder, which finds the answer in the
store (``SharedChallenges``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certbroker.acme import AcmeIssuer, Http01Responder, generate_private_key
from certbroker.acme.shared_challenges import SharedChallenges
from certbroker.clock import SystemClock
from certbroker.store.acme_account import META_PREFIX, StoredAccount
from certbroker.store.postgres import PostgresStore
from certbroker.x509.sealing import KeySealer
from tests.acme.chains import verify_chain
from tests.infra.pebble import Pebble

pytestmark = pytest.mark.integration


class _Crash(Exception):
    """The broker dies right after it persisted the order URL."""


@dataclass
class Broker:
    store: PostgresStore
    issuer: AcmeIssuer
    shared: SharedChallenges


@pytest.fixture
def lookup_through(acme_responder: Http01Responder) -> Iterator[Http01Responder]:
    """Pebble's validation target, as a broker whose own orders these are not."""
    try:
        yield acme_responder
    finally:
        acme_responder.lookup = None


@pytest.fixture
async def brokers(pebble: Pebble, postgres_dsn: str, tmp_path: Path) -> AsyncIterator[list[Broker]]:
    kek = tmp_path / "kek"
    KeySealer.generate_file(str(kek))
    sealer = KeySealer.load(str(kek))
    made: list[Broker] = []
    try:
        for owner in ("one", "two", "three"):
            store = await PostgresStore.open(postgres_dsn, poll_interval=60)
            shared = SharedChallenges(store, SystemClock(), Http01Responder(), owner)
            issuer = AcmeIssuer(
                pebble.directory_url,
                ca_bundle=pebble.ca_bundle_path,
                email=None,
                account_store=StoredAccount(store, sealer, pebble.directory_url),
                responder=shared,
                poll_interval=0.05,
                order_timeout=30,
            )
            made.append(Broker(store, issuer, shared))
        yield made
    finally:
        for broker in made:
            await broker.issuer.close()
            await broker.store.close()


async def test_brokers_starting_together_register_one_account_and_resume_each_others_orders(
    brokers: list[Broker], pebble: Pebble, lookup_through: Http01Responder, unique_name: str
) -> None:
    one, two, three = brokers
    await asyncio.gather(*(b.issuer.start() for b in brokers))
    assert one.issuer.account_url == two.issuer.account_url == three.issuer.account_url
    stored = await one.store.get_meta(f"{META_PREFIX}:{pebble.directory_url}")
    assert stored is not None and json.loads(stored)["url"] == one.issuer.account_url

    lookup_through.lookup = three.shared.lookup  # Pebble asks here; the orders are not its own
    key = generate_private_key()
    saved: list[str] = []

    async def persist_then_die(url: str) -> None:
        saved.append(url)
        raise _Crash

    with pytest.raises(_Crash):
        await one.issuer.issue([unique_name], key, on_order_created=persist_then_die)
    issued = pebble.issued_count()

    cert = await two.issuer.resume(saved[0], [unique_name], key)

    assert cert.order_url == saved[0]  # the same order, not a new one
    verify_chain(cert.chain_pem, pebble.root_pem(), unique_name)
    assert pebble.issued_count() == issued + 1
    assert three.shared.queries >= 1  # validated through a broker that looked it up
    assert len(lookup_through) == 0  # nothing was published on the validating broker itself
