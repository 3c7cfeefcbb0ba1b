"""A CA outage and reset, against a real Pebble stopped and restarted on the same ports.

Pebble keeps nothing across a restart (accounts, orders, its root), as a staging
CA reset or a disaster recovery would: the broker must pause, hold the domains
without counting failures, and issue them all once the CA answers again, with
no broker restart (registering its account again on the way).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import started_broker
from tests.infra.pebble import Pebble
from tests.infra.ports import free_port
from tests.integration.lab import NINETY_DAYS, Lab, in_use, unique_domain, verify_chain, wait_status
from tests.observe import scrape, value


@pytest.fixture
def own_ca(lab: Lab) -> Iterator[Lab]:
    """A Pebble of this test's own (the shared one must not restart under other tests)."""
    http01_port = free_port()
    with Pebble.running(
        http_port=http01_port,
        dns_server=lab.dns.dns_address,
        nonce_reject_percent=0,
        authz_reuse_percent=0,
        validity_seconds=NINETY_DAYS,
    ) as pebble:
        yield Lab(dns=lab.dns, pebble=pebble, http01_port=http01_port)


def held_for_ca(d: domain_pb2.Domain) -> bool:
    return d.retry.last_error_reason == "CA_UNAVAILABLE"


async def test_domains_added_while_the_ca_is_down_are_held_then_issued_after_a_reset(
    own_ca: Lab, tmp_path: Path
) -> None:
    pebble = own_ca.pebble
    before = [unique_domain() for _ in range(3)]
    during = [unique_domain() for _ in range(3)]
    settings = own_ca.settings(tmp_path, metrics_listen=("127.0.0.1", 0))
    async with started_broker(settings) as broker:
        port = broker.running.metrics_port
        assert port is not None
        for name in before:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop")
            )
        for name in before:
            await wait_status(broker.stub, name, in_use)

        await asyncio.to_thread(pebble.stop_keeping_ports)
        for name in during:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop")
            )
        for name in during:
            held = await wait_status(broker.stub, name, held_for_ca)
            assert held.retry.attempt == 0
            # GetStatus shows when the shared probe runs next (a moment after the hold).
            assert held.retry.HasField("next_attempt_time")
            probe = held.retry.next_attempt_time.ToDatetime()
            assert probe > held.retry.last_error_time.ToDatetime()
            assert held.lets_encrypt_state != domain_pb2.LETS_ENCRYPT_STATE_ACTION_REQUIRED
        metrics = await scrape(port)  # the operator sees the pause
        assert value(metrics, "certbroker_ca_available") == 0
        for name in before:  # what serves keeps serving
            status = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
            assert in_use(status.domain)

        await asyncio.to_thread(pebble.restart_on_same_ports)  # accounts and orders wiped
        root = pebble.root_pem()  # a new root: trust refreshed, as the fixtures do
        for name in during:
            # The first probe comes 5 s after the outage began (then 10, 20 …).
            done = await wait_status(broker.stub, name, in_use, timeout=30)
            assert done.retry.attempt == 0
            verify_chain(done.lets_encrypt_certificate.chain_pem, root, name)
        metrics = await scrape(port)
        assert value(metrics, "certbroker_ca_available") == 1
        paused = value(metrics, "certbroker_ca_paused_seconds_total")
        assert paused is not None and paused > 0
