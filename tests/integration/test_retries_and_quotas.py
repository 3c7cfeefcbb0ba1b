"""Backoff against a failing CA, quotas counted locally, and crash recovery without duplicates."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from certbroker.clock import FakeClock
from certbroker.limits import Bucket
from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from tests.broker import started_broker
from tests.infra.pebble import Pebble
from tests.infra.ports import free_port
from tests.integration.lab import (
    BrokerProcess,
    Lab,
    in_use,
    unique_domain,
    verify_chain,
    wait_status,
)


async def test_backoff_doubles_from_one_minute_and_caps_at_a_day(
    lab: Lab, failing_ca: Pebble, tmp_path: Path
) -> None:
    name = unique_domain()
    clock = FakeClock(datetime.now(UTC))
    settings = lab.settings(
        tmp_path, acme_directory=failing_ca.directory_url, acme_ca_bundle=failing_ca.ca_bundle_path
    )
    async with started_broker(settings, clock) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        )
        for attempt, minutes in ((1, 1), (2, 2), (3, 4), (4, 8), (5, 16)):
            status = await wait_status(broker.stub, name, lambda d, a=attempt: d.retry.attempt == a)
            retry = status.retry
            wait = retry.next_attempt_time.ToDatetime(UTC) - retry.last_error_time.ToDatetime(UTC)
            assert wait == timedelta(minutes=minutes), (attempt, wait)
            assert retry.last_error_reason.startswith("ACME_")
            assert status.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_CREATING
            # one second early: nothing happens
            clock.set(retry.next_attempt_time.ToDatetime(UTC) - timedelta(seconds=1))
            same = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
            assert same.domain.retry.attempt == attempt
            clock.set(retry.next_attempt_time.ToDatetime(UTC))

        # Jump the count to 11 consecutive failures; the 12th and 13th wait one day each.
        await wait_status(broker.stub, name, lambda d: d.retry.attempt == 6)
        store = broker.running.store
        async with store.transaction() as tx:
            current = await tx.get_domain(name)
            assert current is not None
            await tx.put_domain(replace(current, retry=replace(current.retry, attempt=11)))
        for attempt in (12, 13):
            status = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
            clock.set(status.domain.retry.next_attempt_time.ToDatetime(UTC))
            status_reply = await wait_status(
                broker.stub, name, lambda d, a=attempt: d.retry.attempt == a
            )
            retry = status_reply.retry
            wait = retry.next_attempt_time.ToDatetime(UTC) - retry.last_error_time.ToDatetime(UTC)
            assert wait == timedelta(days=1)

    # The attempt count and next try survive a restart (they are columns, not memory).
    async with started_broker(settings, clock) as broker:
        again = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
        assert again.domain.retry.attempt == 13
        assert again.domain.retry.next_attempt_time == retry.next_attempt_time


async def test_retry_now_runs_at_once_without_resetting_attempts(
    lab: Lab, failing_ca: Pebble, tmp_path: Path
) -> None:
    name = unique_domain()
    clock = FakeClock(datetime.now(UTC))
    settings = lab.settings(
        tmp_path, acme_directory=failing_ca.directory_url, acme_ca_bundle=failing_ca.ca_bundle_path
    )
    async with started_broker(settings, clock) as broker:
        request = broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        await broker.stub.IssueCertificate(request)
        await wait_status(broker.stub, name, lambda d: d.retry.attempt == 1)
        await broker.stub.IssueCertificate(request)  # "retry now", clock not moved
        status = await wait_status(broker.stub, name, lambda d: d.retry.attempt == 2)
        assert status.retry.next_attempt_time.ToDatetime(UTC) - clock.now() == timedelta(minutes=2)


async def test_registered_domain_quota_holds_orders_until_a_slot_frees(
    lab: Lab, tmp_path: Path
) -> None:
    clock = FakeClock(datetime.now(UTC))
    settings = lab.settings(tmp_path, quota_per_registered_domain=Bucket(2, timedelta(days=7)))
    names = [unique_domain(f"q{i}") for i in range(3)]
    async with started_broker(settings, clock) as broker:
        for name in names[:2]:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop")
            )
            await wait_status(broker.stub, name, in_use)
        issued = lab.pebble.issued_count()
        first_issue = clock.now()
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=names[2], app="shop")
        )
        held = await wait_status(
            broker.stub, names[2], lambda d: d.retry.last_error_reason == "QUOTA_REGISTERED_DOMAIN"
        )
        assert held.retry.attempt == 0
        # DNS and CAA passed: a quota hold is Creating, with the reason and the next slot.
        assert held.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_CREATING
        # a token bucket of 2 per 7 days: the next token comes 3.5 days after both went
        assert held.retry.next_attempt_time.ToDatetime(UTC) == first_issue + timedelta(days=3.5)
        assert "example.test" in held.retry.last_error_message
        # "retry now" does not reset the quota
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=names[2], app="shop")
        )
        again = await wait_status(
            broker.stub,
            names[2],
            lambda d: (
                d.retry.last_error_time.ToDatetime(UTC) >= clock.now()
                and d.retry.last_error_reason == "QUOTA_REGISTERED_DOMAIN"
            ),
        )
        assert again.lets_encrypt_state != domain_pb2.LETS_ENCRYPT_STATE_IN_USE
        assert lab.pebble.issued_count() == issued
        clock.advance(timedelta(days=3.5))
        await wait_status(broker.stub, names[2], in_use)


async def test_name_set_quota_counts_issuances_after_removal(lab: Lab, tmp_path: Path) -> None:
    clock = FakeClock(datetime.now(UTC))
    settings = lab.settings(tmp_path, quota_per_name_set=Bucket(1, timedelta(days=7)))
    name = unique_domain()
    async with started_broker(settings, clock) as broker:
        request = broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        await broker.stub.IssueCertificate(request)
        await wait_status(broker.stub, name, in_use)
        await broker.stub.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=name))
        await broker.stub.IssueCertificate(request)
        held = await wait_status(
            broker.stub, name, lambda d: d.retry.last_error_reason == "QUOTA_NAME_SET"
        )
        assert held.serving_source == domain_pb2.CERTIFICATE_SOURCE_NONE


async def test_default_nonce_rejection_still_issues(lab: Lab, tmp_path: Path) -> None:
    """Pebble's default 5 % badNonce rejection: retried inside the step, every domain issued."""
    http01 = free_port()
    with Pebble.running(
        http_port=http01,
        dns_server=lab.dns.dns_address,
        authz_reuse_percent=0,
    ) as pebble:
        settings = lab.settings(
            tmp_path,
            acme_directory=pebble.directory_url,
            acme_ca_bundle=pebble.ca_bundle_path,
            http01_listen=("127.0.0.1", http01),
        )
        names = [unique_domain(f"n{i}") for i in range(12)]
        async with started_broker(settings) as broker:
            await asyncio.gather(
                *(
                    broker.stub.IssueCertificate(
                        broker_pb2.IssueCertificateRequest(domain=n, app="a")
                    )
                    for n in names
                )
            )
            for name in names:
                status = await wait_status(broker.stub, name, in_use, timeout=30)
                assert status.retry.attempt == 0
                verify_chain(status.lets_encrypt_certificate.chain_pem, pebble.root_pem(), name)
        assert pebble.issued_count() == len(names)


async def test_kill_9_during_issuance_then_restart_issues_each_domain_once(
    lab: Lab, tmp_path: Path
) -> None:
    port = free_port()
    process = BrokerProcess(lab.settings(tmp_path), port, tmp_path / "broker.log")
    names = [unique_domain(f"k{i}") for i in range(8)]
    issued_before = lab.pebble.issued_count()
    process.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
            watch = stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=0))
            await asyncio.gather(
                *(
                    stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=n, app="a"))
                    for n in names
                )
            )
            # Kill the moment the first order is under way.
            async for response in watch:
                if (
                    response.event.domain.lets_encrypt_state
                    == domain_pb2.LETS_ENCRYPT_STATE_CREATING
                ):
                    process.kill()
                    break
        process.start()
        deadline = time.monotonic() + 30
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
            for name in names:
                status = await wait_status(
                    stub, name, in_use, timeout=max(1.0, deadline - time.monotonic())
                )
                verify_chain(status.lets_encrypt_certificate.chain_pem, lab.pebble.root_pem(), name)
        issued = lab.pebble.issued_serials()[-(lab.pebble.issued_count() - issued_before) :]
        assert lab.pebble.issued_count() - issued_before == len(names), issued
    finally:
        assert process.terminate() == 0
