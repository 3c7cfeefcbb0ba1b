"""Retry-now is quota-safe: a failing domain is forced at most once per interval (Pebble counts)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client.client import BrokerError
from tests.broker import BrokerHandle, started_broker
from tests.infra.pebble import Pebble
from tests.integration.lab import Lab, unique_domain, wait_status

INTERVAL = timedelta(minutes=10)


async def refused(broker: BrokerHandle, request: broker_pb2.IssueCertificateRequest) -> BrokerError:
    with pytest.raises(grpc.RpcError) as caught:
        await broker.stub.IssueCertificate(request)
    return BrokerError.from_rpc_error(caught.value)


async def settled(broker: BrokerHandle, clock: FakeClock) -> None:
    """Nothing in flight and nothing due at the (frozen) fake time: no order can follow."""
    for _ in range(500):
        next_due = await broker.running.store.next_due_time()
        if broker.running.scheduler.busy == 0 and (next_due is None or next_due > clock.now()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the scheduler did not settle")


async def test_ten_forced_retries_place_at_most_one_order_within_the_interval(
    lab: Lab, failing_ca: Pebble, tmp_path: Path
) -> None:
    name = unique_domain()
    clock = FakeClock(datetime.now(UTC))
    settings = lab.settings(
        tmp_path, acme_directory=failing_ca.directory_url, acme_ca_bundle=failing_ca.ca_bundle_path
    )
    request = broker_pb2.IssueCertificateRequest(domain=name, app="shop")
    async with started_broker(settings, clock) as broker:
        await broker.stub.IssueCertificate(request)
        await wait_status(broker.stub, name, lambda d: d.retry.attempt == 1)
        orders = failing_ca.order_count()

        await broker.stub.IssueCertificate(request)  # the 1st forced retry goes
        await wait_status(broker.stub, name, lambda d: d.retry.attempt == 2)
        for _ in range(9):  # the 2nd..10th, the fake clock standing still
            error = await refused(broker, request)
            assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.reason == "RETRY_TOO_SOON"
            assert error.retry_after is not None
            assert timedelta(0) < error.retry_after <= INTERVAL
        status = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
        assert status.domain.retry.attempt == 2
        assert failing_ca.order_count() - orders == 1

        # A settings change is applied, never refused, and is no way around the backoff.
        before = status.domain.retry.next_attempt_time
        changed = await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain=name, app="shop", key_algorithm=domain_pb2.KEY_ALGORITHM_RSA_2048
            )
        )
        assert changed.domain.key_algorithm == domain_pb2.KEY_ALGORITHM_RSA_2048
        off = broker_pb2.IssueCertificateRequest(domain=name, app="shop", disable_letsencrypt=True)
        await broker.stub.IssueCertificate(off)
        on = await broker.stub.IssueCertificate(request)
        assert on.domain.retry.next_attempt_time == before
        assert on.domain.retry.attempt == 2
        await settled(broker, clock)
        assert failing_ca.order_count() - orders == 1

    # The last forced retry is a column: a restart does not reopen the allowance.
    async with started_broker(settings, clock) as broker:
        assert (await refused(broker, request)).reason == "RETRY_TOO_SOON"

        # After the interval one more is allowed (the natural 2-minute retry ran meanwhile).
        clock.advance(INTERVAL)
        await wait_status(broker.stub, name, lambda d: d.retry.attempt == 3)
        orders = failing_ca.order_count()
        await asyncio.gather(*(broker.stub.IssueCertificate(request) for _ in range(10)))
        await wait_status(broker.stub, name, lambda d: d.retry.attempt == 4)
        assert (await refused(broker, request)).reason == "RETRY_TOO_SOON"
        await settled(broker, clock)
        assert failing_ca.order_count() - orders == 1


async def test_removing_and_adding_a_failing_domain_again_places_no_order(
    lab: Lab, failing_ca: Pebble, tmp_path: Path
) -> None:
    """A remove/add loop is no way around the backoff, for the same app or another one."""
    name = unique_domain()
    clock = FakeClock(datetime.now(UTC))
    settings = lab.settings(
        tmp_path, acme_directory=failing_ca.directory_url, acme_ca_bundle=failing_ca.ca_bundle_path
    )
    add = broker_pb2.IssueCertificateRequest(domain=name, app="shop")
    remove = broker_pb2.RemoveDomainRequest(domain=name, app="shop")
    async with started_broker(settings, clock) as broker:
        await broker.stub.IssueCertificate(add)
        failed = await wait_status(broker.stub, name, lambda d: d.retry.attempt == 1)
        orders = failing_ca.order_count()

        for _ in range(5):  # the loop that used to order each time
            await broker.stub.RemoveDomain(remove)
            again = (await broker.stub.IssueCertificate(add)).domain
            assert again.retry.attempt == 1
            assert again.retry.next_attempt_time == failed.retry.next_attempt_time
            assert again.retry.last_error_reason == failed.retry.last_error_reason
        await settled(broker, clock)
        assert failing_ca.order_count() == orders
        # the rationed forced retry still applies (and is spent once, as before)
        await broker.stub.IssueCertificate(add)
        await wait_status(broker.stub, name, lambda d: d.retry.attempt == 2)
        assert (await refused(broker, add)).reason == "RETRY_TOO_SOON"

        # another app taking the name over waits too, without seeing shop's error text
        await broker.stub.RemoveDomain(remove)
        other = broker_pb2.IssueCertificateRequest(domain=name, app="other")
        taken = (await broker.stub.IssueCertificate(other)).domain
        assert taken.retry.attempt == 2
        assert taken.retry.last_error_reason == "NAME_BACKING_OFF"
        assert (await refused(broker, other)).reason == "RETRY_TOO_SOON"
        await settled(broker, clock)
        assert failing_ca.order_count() == orders + 1

        # once the wait runs out, the next attempt goes as usual
        clock.advance(timedelta(days=1))
        await wait_status(broker.stub, name, lambda d: d.retry.attempt == 3)
        assert failing_ca.order_count() == orders + 2
