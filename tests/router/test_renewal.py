"""A renewal after a broker restart reaches the router, with no event missed.

Pebble here issues 30-second certificates, so the broker renews two thirds
in (about 20 s after issuance) on its real clock: a real ACME renewal,
validated through the router's HTTP port, with no clock tricks. The broker is
killed and restarted in between; the router must resume from its revision
(no re-snapshot) and apply every later event of the domain, in order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from certbroker.v1 import domain_pb2
from tests.infra.challtestsrv import ChallTestSrv
from tests.router.conftest import Topology, topology
from tests.router.support import fingerprint, served, wait_until

pytestmark = pytest.mark.integration

VALIDITY_SECONDS = 30
SERVES = (domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT, domain_pb2.CERTIFICATE_SOURCE_CUSTOM)


@pytest.fixture(scope="module")
async def topo(
    tmp_path_factory: pytest.TempPathFactory, dns: ChallTestSrv
) -> AsyncIterator[Topology]:
    async with topology(
        tmp_path_factory.mktemp("router-renewal"), dns, validity_seconds=VALIDITY_SECONDS
    ) as running:
        yield running


async def test_renewal_after_a_broker_restart_reaches_the_router(topo: Topology) -> None:
    name = f"renew.r{uuid.uuid4().hex[:10]}.example.test"
    await topo.api.issue_certificate(name, "shop")
    first = await topo.wait_domain(
        name, lambda d: d.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE
    )
    old = first.lets_encrypt_certificate.sha256_fingerprint
    port = topo.router.https_port
    assert fingerprint(await served(port, name, trust_pem=topo.pebble_root())) == old
    since = topo.watcher.revision

    await asyncio.to_thread(topo.broker.kill)
    await wait_until(lambda: not topo.watcher.connected, 10, "the router to notice")
    assert fingerprint(await served(port, name)) == old  # still served during the outage
    await asyncio.to_thread(topo.broker.start)

    renewed = await topo.wait_domain(
        name,
        lambda d: d.lets_encrypt_certificate.sha256_fingerprint not in ("", old),
        timeout=VALIDITY_SECONDS * 2,
    )
    new = renewed.lets_encrypt_certificate.sha256_fingerprint
    cert = await served(port, name, trust_pem=topo.pebble_root())
    assert fingerprint(cert) == new
    assert topo.watcher.revision >= renewed.revision
    assert topo.watcher.resnapshots == 0

    # Every event of the domain after `since`, read by an independent watcher
    # (api role: no keys), must have been applied by the router, in order.
    expected: list[int] = []
    async with asyncio.timeout(15):
        async for event in topo.api.watch(since, domains=[name]):
            if event.domain.serving_source in SERVES:
                expected.append(event.revision)
            if event.revision >= renewed.revision:
                break
    applied = [
        change.revision
        for change in topo.changes
        if change.revision > since and name in change.updated and not change.resync
    ]
    assert applied == expected
    assert renewed.revision in applied
