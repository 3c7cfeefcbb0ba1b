"""Shared servers for the ACME tests: one challtestsrv, one responder, one Pebble.

Pebble keeps its default 5 % nonce rejection so every test also proves the
badNonce retries; authorization reuse is off so every order really validates.
Every name resolves to 127.0.0.1 (challtestsrv's default), where the responder
listens on the port Pebble's validator uses for HTTP-01.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest

from certbroker.acme import AcmeIssuer, Http01Responder, MemoryAccountStore
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble

_names = itertools.count(1)


@pytest.fixture
def unique_name() -> Iterator[str]:
    """A name no other test uses (authorizations and CAA records never collide)."""
    yield f"t{next(_names)}.acme-test.example"


@pytest.fixture(scope="session")
def acme_dns() -> Iterator[ChallTestSrv]:
    with ChallTestSrv.running() as srv:
        yield srv


@pytest.fixture(scope="session")
async def acme_responder() -> AsyncIterator[Http01Responder]:
    responder = Http01Responder()
    await responder.start("127.0.0.1", 0)
    try:
        yield responder
    finally:
        await responder.stop()


@pytest.fixture(scope="session")
def pebble(acme_dns: ChallTestSrv, acme_responder: Http01Responder) -> Iterator[Pebble]:
    with Pebble.running(
        http_port=acme_responder.port,
        dns_server=acme_dns.dns_address,
        nonce_reject_percent=5,
        authz_reuse_percent=0,
    ) as p:
        yield p


@pytest.fixture(scope="session")
def account_store() -> MemoryAccountStore:
    return MemoryAccountStore()


def make_issuer(
    pebble: Pebble, store: MemoryAccountStore, responder: Http01Responder
) -> AcmeIssuer:
    return AcmeIssuer(
        pebble.directory_url,
        ca_bundle=pebble.ca_bundle_path,
        email="ops@acme-test.example",
        account_store=store,
        responder=responder,
        max_workers=16,
        poll_interval=0.05,
        order_timeout=30,
    )


@pytest.fixture(scope="session")
async def issuer(
    pebble: Pebble, account_store: MemoryAccountStore, acme_responder: Http01Responder
) -> AsyncIterator[AcmeIssuer]:
    iss = make_issuer(pebble, account_store, acme_responder)
    try:
        await iss.start()
        yield iss
    finally:
        await iss.close()
