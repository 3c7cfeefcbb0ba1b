"""Fairness through the real server, as the broker's legitimate heavy callers meet it.

The platform API is ONE client (one mTLS identity) relaying every tenant's input,
and a router fleet may share one certificate: the bad-request budget must not
turn one tenant's typos, or a fleet moving to a new certificate, into every call
of that client refused. Calls no data could have made right (garbage bytes, a
role's forbidden method) still spend it; refusals are counted in
``certbroker_rpc_requests_total``; health checks are never refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certbroker.api.fairness import TOO_MANY_BAD_REQUESTS
from certbroker.limits import Bucket
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from certbroker_client.client import BrokerError
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.observe import scrape, value
from tests.tls import Identity, MtlsFiles

BUDGET = 3
BAD_BUDGET = Bucket(BUDGET, timedelta(hours=1))  # no token comes back during a test
SERVICE = "/certbroker.v1.CertificateBrokerService/"
GARBAGE = b"\xff\xff\xff\xff\x0f" * 20  # does not parse as protobuf
# Each channel its own TCP connection: without TLS a peer is a connection.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# What tenants type into the platform's "add a domain" form.
TYPOS = ["bad..name.example", "-x-.example", "exa mple.com", "*.*.example", "a_b.example"]


async def _failure(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), BrokerError.from_rpc_error(caught.value).reason


def _issue(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub, name: str, app: str
) -> Awaitable[object]:
    request = broker_pb2.IssueCertificateRequest(domain=name, app=app, disable_letsencrypt=True)
    return stub.IssueCertificate(request, timeout=30)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[BrokerHandle]:
    settings = broker_settings(
        tmp_path,
        max_inflight_per_peer=10,
        bad_requests_per_peer=BAD_BUDGET,
        metrics_listen=("127.0.0.1", 0),
    )
    async with started_broker(settings) as handle:
        yield handle


@pytest.fixture
async def channel(broker: BrokerHandle) -> AsyncIterator[grpc.aio.Channel]:
    """One connection: one peer, like the platform's one identity."""
    opened = grpc.aio.insecure_channel(broker.address, options=OWN_CONNECTION)
    yield opened
    await opened.close()


async def test_a_platform_relaying_its_tenants_invalid_names_keeps_serving_the_others(
    channel: grpc.aio.Channel,
) -> None:
    platform = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
    for typo in TYPOS:  # more than the budget: one tenant's bulk import, or a malicious one
        code, _ = await _failure(_issue(platform, typo, "careless-tenant"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # the precise answer, every time
    # Every other tenant of the platform is still served.
    added = await _issue(platform, "www.other-tenant.example", "other-tenant")
    assert isinstance(added, broker_pb2.IssueCertificateResponse)
    status = await platform.GetStatus(
        broker_pb2.GetStatusRequest(domain="www.other-tenant.example"), timeout=30
    )
    assert status.domain.domain == "www.other-tenant.example"


async def test_calls_no_data_could_make_right_still_spend_the_budget(
    broker: BrokerHandle, channel: grpc.aio.Channel
) -> None:
    stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
    garbage = channel.unary_unary(SERVICE + "GetStatus")

    async def watch_keys() -> None:  # private keys over plaintext: refused whatever else
        async for _ in stub.WatchStatus(broker_pb2.WatchStatusRequest(include_keys=True)):
            pass

    assert await _failure(watch_keys()) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "KEYS_REQUIRE_MTLS",
    )
    for _ in range(BUDGET - 1):
        assert (await _failure(garbage(GARBAGE, timeout=30)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    refused = await _failure(_issue(stub, "www.fine.example", "shop"))
    assert refused == (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_BAD_REQUESTS)

    # The operator sees the refusals (and the garbage) by method and code.
    port = broker.running.metrics_port
    assert port is not None
    text = await scrape(port)
    counted = value(
        text, "certbroker_rpc_requests_total", method="IssueCertificate", code="RESOURCE_EXHAUSTED"
    )
    assert counted == 1
    malformed = value(
        text, "certbroker_rpc_requests_total", method="GetStatus", code="INVALID_ARGUMENT"
    )
    assert malformed == BUDGET - 1


async def test_health_checks_of_a_peer_out_of_budget_are_answered(
    channel: grpc.aio.Channel,
) -> None:
    garbage = channel.unary_unary(SERVICE + "GetStatus")
    for _ in range(BUDGET):
        await _failure(garbage(GARBAGE, timeout=30))
    assert (await _failure(garbage(GARBAGE, timeout=30)))[1] == TOO_MANY_BAD_REQUESTS
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_router_fleet_moving_to_a_new_certificate_still_gets_its_certificates(
    tmp_path: Path,
) -> None:
    """Router ids stay held by the old certificate until forgotten: every router of the
    fleet, now under the new one, gets ROUTER_ID_TAKEN at each report meanwhile. That is
    the registry's answer, not a reason to refuse the fleet its status and certificates."""
    mtls = MtlsFiles(tmp_path / "tls")
    server = mtls.issue("broker", server=True)
    old, new = mtls.issue("routers-2025"), mtls.issue("routers-2026")
    settings = broker_settings(
        tmp_path,
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(mtls.ca),
        roles={"routers-2025": "router", "routers-2026": "router", "api-1": "api"},
        bad_requests_per_peer=BAD_BUDGET,
    )
    api = mtls.issue("api-1")

    def connect(who: Identity) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=mtls.ca.read_bytes(),
            private_key=who.key.read_bytes(),
            certificate_chain=who.cert.read_bytes(),
        )
        return grpc.aio.secure_channel(
            f"127.0.0.1:{handle.running.port}", credentials, options=OWN_CONNECTION
        )

    async with started_broker(settings) as handle:
        channels = [connect(old), connect(new), connect(api)]
        before, after, platform = (
            broker_pb2_grpc.CertificateBrokerServiceStub(c) for c in channels
        )
        try:
            await _issue(platform, "www.shop.example", "shop")
            ids = [f"edge-{i}" for i in range(BUDGET + 2)]
            for router_id in ids:
                await before.ReportServing(
                    broker_pb2.ReportServingRequest(router_id=router_id), timeout=30
                )
            for router_id in ids:
                report = after.ReportServing(
                    broker_pb2.ReportServingRequest(router_id=router_id), timeout=30
                )
                assert await _failure(report) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "ROUTER_ID_TAKEN",
                )
            status = await after.GetStatus(
                broker_pb2.GetStatusRequest(domain="www.shop.example"), timeout=30
            )
            assert status.domain.domain == "www.shop.example"
        finally:
            for channel in channels:
                await channel.close()


async def test_routers_told_to_resync_after_compaction_are_not_locked_out(
    broker: BrokerHandle, channel: grpc.aio.Channel
) -> None:
    """REVISION_COMPACTED (OUT_OF_RANGE) is the protocol's "start again from 0", which a
    whole fleet sharing a certificate gets at once after a long partition."""
    stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
    for n in range(3):
        await _issue(stub, f"d{n}.shop.example", "shop")
    await broker.running.store.compact_events(datetime.now(UTC) + timedelta(days=1))

    async def resume_from_1() -> None:
        async for _ in stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=1)):
            pass

    for _ in range(BUDGET + 2):  # one per router of the fleet
        assert await _failure(resume_from_1()) == (
            grpc.StatusCode.OUT_OF_RANGE,
            "REVISION_COMPACTED",
        )
    status = await stub.GetStatus(broker_pb2.GetStatusRequest(domain="d0.shop.example"))
    assert status.domain.domain == "d0.shop.example"


async def test_invalid_answers_past_the_budget_come_back_slower_and_nothing_else_does(
    channel: grpc.aio.Channel,
) -> None:
    """A client flooding well-formed invalid requests (unary or streams) gets one answer
    per call in flight per second; its valid calls are answered at once meanwhile."""
    stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
    loop = asyncio.get_running_loop()

    async def invalid_watch() -> None:
        names = [f"n{i}.example" for i in range(1001)]  # over the filter cap
        async for _ in stub.WatchStatus(broker_pb2.WatchStatusRequest(domains=names)):
            pass

    for attempt in (lambda: _issue(stub, "bad..name.example", "t"), invalid_watch):
        for _ in range(BUDGET):  # the bucket: answered at once
            assert (await _failure(attempt()))[0] == grpc.StatusCode.INVALID_ARGUMENT
        started = loop.time()
        assert (await _failure(attempt()))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert loop.time() - started >= 0.45  # held (PENALTY ± 50 %)
        started = loop.time()
        added = await _issue(stub, f"ok{int(started)}.example", "t")
        assert isinstance(added, broker_pb2.IssueCertificateResponse)
        assert loop.time() - started < 0.45  # valid calls are not held
