"""Store failures degrade, never spin: a full disk, a locked database, a certificate lost on
the way to the disk. The real server and real SQLite; the full disk is injected at COMMIT."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2
from certbroker_client.client import BrokerError
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.faults import FullDisk
from tests.infra.challtestsrv import ChallTestSrv
from tests.integration.lab import Lab, in_use, unique_domain, wait_status

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(broker: BrokerHandle) -> int:
    stub = health_pb2_grpc.HealthStub(broker.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    return int(reply.status)


async def wait_for(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_full_disk_gives_bounded_retries_not_serving_then_recovery(
    dns_server: ChallTestSrv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock(datetime.now(UTC))
    disk = FullDisk()
    # DNS never points at the platform (every name answers 127.0.0.1, the platform is
    # 192.0.2.10): every step is one DNS check and one write, and the CA (an address
    # nothing listens on) is never reached.
    settings = broker_settings(
        tmp_path,
        acme_directory="https://127.0.0.1:1/directory",
        dns_servers=(("127.0.0.1", dns_server.dns_port),),
        platform_targets=("192.0.2.10",),
    )
    names = [f"d{i}.{unique_domain('full')}" for i in range(10)]
    async with started_broker(settings, clock, open_store=disk.open) as broker:
        for name in names:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop")
            )
        for name in names:
            await wait_status(
                broker.stub, name, lambda d: d.retry.last_error_reason == "DNS_NOT_POINTING"
            )
        assert await health(broker) == SERVING

        disk.full = True
        with pytest.raises(grpc.RpcError) as caught:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=unique_domain("new"), app="shop")
            )
        error = BrokerError.from_rpc_error(caught.value)
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert error.reason == "STORE_FULL"
        assert error.retry_after is not None and error.retry_after > timedelta(0)

        outage = clock.now() + timedelta(days=1)
        clock.set(outage)  # every domain is due again, and every write fails
        commits = disk.commits

        async def first_round_failed() -> bool:
            return disk.failed_commits > 1 and broker.running.scheduler.busy == 0

        await wait_for(first_round_failed, "the first failing round")
        await asyncio.sleep(1.0)  # real time, fake clock standing still: nothing may repeat
        first_round = disk.commits - commits
        assert first_round <= len(names) + 1, first_round  # once per domain at most
        assert await health(broker) == SERVING  # one round is a blip, not an outage

        for delay in (1, 2):  # the probe's 1 s, 2 s pauses: one write each
            clock.advance(timedelta(seconds=delay))
            before = disk.commits

            async def probed(before: int = before) -> bool:
                return disk.commits > before

            await wait_for(probed, "a probe write")
            await asyncio.sleep(0.3)
            assert disk.commits - before == 1
        assert await health(broker) == NOT_SERVING
        # Reads still answer while writes fail.
        status = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=names[0]))
        assert status.domain.retry.last_error_reason == "DNS_NOT_POINTING"

        disk.full = False
        clock.advance(timedelta(seconds=4))

        async def serving() -> bool:
            return await health(broker) == SERVING

        await wait_for(serving, "SERVING again")
        for name in names:  # every step is recorded after all: nothing was lost
            await wait_status(
                broker.stub,
                name,
                lambda d: d.retry.last_error_time.ToDatetime(UTC) > outage,
            )
        added = await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=unique_domain("after"), app="shop")
        )
        assert added.domain.revision > 0

    store_logs = [r for r in caplog.records if r.name.startswith("certbroker")]
    assert not [r for r in store_logs if r.exc_info], "no traceback per failed attempt"
    warnings = [r for r in store_logs if "cannot record scheduler steps" in r.getMessage()]
    assert len(warnings) == 1  # once per 30 s, and the outage lasted seconds of fake time
    assert any("takes writes again" in r.getMessage() for r in store_logs)


async def test_a_locked_database_answers_rpcs_unavailable_with_retry_info_quickly(
    tmp_path: Path,
) -> None:
    settings = broker_settings(tmp_path)
    async with started_broker(settings) as broker:
        name = unique_domain()
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        )
        # Another process takes the write lock. From a thread: waiting for it on the event
        # loop would stall the broker's own transaction in flight, which holds the lock.
        other = sqlite3.connect(settings.db, isolation_level=None, check_same_thread=False)
        await asyncio.to_thread(other.execute, "BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                await broker.stub.IssueCertificate(
                    broker_pb2.IssueCertificateRequest(domain=unique_domain("b"), app="shop")
                )
            waited = time.monotonic() - started
            error = BrokerError.from_rpc_error(caught.value)
            assert error.code is grpc.StatusCode.UNAVAILABLE
            assert error.reason == "STORE_BUSY"
            assert error.retry_after == timedelta(seconds=1)
            assert waited < 5.0, waited  # was 9.6 s, then INTERNAL
            # Reads do not wait for the lock.
            status = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
            assert status.domain.domain == name
        finally:
            await asyncio.to_thread(other.execute, "ROLLBACK")
            other.close()
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=unique_domain("c"), app="shop")
        )


async def test_a_certificate_issued_but_not_stored_is_downloaded_again_not_reordered(
    lab: Lab, tmp_path: Path
) -> None:
    disk = FullDisk()
    disk.fail_certificate_commits = 1  # the disk fills just as the certificate arrives
    name = unique_domain()
    orders, issued = lab.pebble.order_count(), lab.pebble.issued_count()
    async with started_broker(lab.settings(tmp_path), open_store=disk.open) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        )
        status = await wait_status(broker.stub, name, in_use, timeout=30)
    assert disk.fail_certificate_commits == 0  # the failure did happen
    assert lab.pebble.order_count() - orders == 1
    assert lab.pebble.issued_count() - issued == 1
    serial = int(lab.pebble.issued_serials()[-1], 16)
    assert int(status.lets_encrypt_certificate.serial, 16) == serial
    assert status.retry.attempt == 0  # the store's failure is not the CA's
