"""Per-peer fairness through the real server: one peer over its limits, the others served.

Calls are held in flight deterministically: GetStatus of ``SLOW`` waits on a
gate the test opens (the broker runs in this process), and the test waits until
the server has entered each held call before going on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from certbroker.api.fairness import TOO_MANY_BAD_REQUESTS, TOO_MANY_IN_FLIGHT
from certbroker.limits import Bucket
from certbroker.model import Domain
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from certbroker_client.client import BrokerError
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.tls import Identity, MtlsFiles

SLOW = "slow.shop.example"
OTHER = "other.shop.example"
GARBAGE = b"\xff\xff\xff\xff\x0f" * 20  # does not parse as protobuf
SERVICE = "/certbroker.v1.CertificateBrokerService/"
CAP = 3
BAD_BUDGET = Bucket(3, timedelta(hours=1))  # one token back every 20 minutes: none in a test
# Each channel its own TCP connection (gRPC would share one between equal channels):
# without TLS a peer is a connection.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


class Gate:
    """Holds GetStatus of ``SLOW`` until opened; counts the calls that reached it."""

    def __init__(self, original: Callable[..., Awaitable[Domain]]) -> None:
        self._original = original
        self.opened = asyncio.Event()
        self.entered = 0

    async def get_status(self, domain: str, *args: Any, **kwargs: Any) -> Domain:
        if domain == SLOW:
            self.entered += 1
            await self.opened.wait()
        return await self._original(domain, *args, **kwargs)

    async def wait_entered(self, count: int) -> None:
        async with asyncio.timeout(30):
            while self.entered < count:
                await asyncio.sleep(0.01)


async def _add(stub: broker_pb2_grpc.CertificateBrokerServiceStub, *names: str) -> None:
    for name in names:
        await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop", disable_letsencrypt=True),
            timeout=10,
        )


def _refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, timedelta | None]:
    decoded = BrokerError.from_rpc_error(error)
    return error.code(), decoded.reason, decoded.retry_after


async def _get(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub, name: str
) -> broker_pb2.GetStatusResponse:
    return await stub.GetStatus(broker_pb2.GetStatusRequest(domain=name), timeout=30)


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrokerHandle]:
    settings = broker_settings(
        tmp_path_factory.mktemp("fairness"),
        max_inflight_per_peer=CAP,
        bad_requests_per_peer=BAD_BUDGET,
    )
    async with started_broker(settings) as handle:
        await _add(handle.stub, SLOW, OTHER)
        yield handle


@pytest.fixture
def gate(broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch) -> Gate:
    held = Gate(broker.running.broker.get_status)
    monkeypatch.setattr(broker.running.broker, "get_status", held.get_status)
    return held


@pytest.fixture
async def connect(broker: BrokerHandle) -> AsyncIterator[Callable[[], grpc.aio.Channel]]:
    """New connections to the broker (each one a peer), closed after the test."""
    channels: list[grpc.aio.Channel] = []

    def new() -> grpc.aio.Channel:
        channels.append(grpc.aio.insecure_channel(broker.address, options=OWN_CONNECTION))
        return channels[-1]

    yield new
    for channel in channels:
        await channel.close()


async def test_a_peer_over_its_in_flight_cap_is_refused_while_another_is_served(
    gate: Gate, connect: Callable[[], grpc.aio.Channel]
) -> None:
    busy_channel, other_channel = connect(), connect()
    busy = broker_pb2_grpc.CertificateBrokerServiceStub(busy_channel)
    other = broker_pb2_grpc.CertificateBrokerServiceStub(other_channel)
    held = [asyncio.create_task(_get(busy, SLOW)) for _ in range(CAP)]
    await gate.wait_entered(CAP)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get(busy, OTHER)
    assert _refusal(caught.value) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        TOO_MANY_IN_FLIGHT,
        timedelta(seconds=1),
    )
    assert f"the limit is {CAP}" in (caught.value.details() or "")
    # refused before the request is parsed: garbage gets the same answer, not INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await busy_channel.unary_unary(SERVICE + "GetStatus")(GARBAGE, timeout=10)
    assert _refusal(caught.value)[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_IN_FLIGHT)

    assert (await _get(other, OTHER)).domain.domain == OTHER  # another peer is served
    gate.opened.set()
    for reply in await asyncio.gather(*held):
        assert reply.domain.domain == SLOW
    assert (await _get(busy, OTHER)).domain.domain == OTHER  # the cap freed


async def test_watch_streams_do_not_count_against_the_in_flight_cap(
    connect: Callable[[], grpc.aio.Channel],
) -> None:
    channel = connect()
    stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
    streams = [stub.WatchStatus(broker_pb2.WatchStatusRequest()) for _ in range(CAP + 2)]
    try:
        for stream in streams:
            await asyncio.wait_for(stream.read(), timeout=30)  # the stream is open on the server
        assert (await _get(stub, OTHER)).domain.domain == OTHER
    finally:
        for stream in streams:
            stream.cancel()


async def test_a_peer_out_of_bad_request_budget_is_held_and_refused_others_are_served(
    connect: Callable[[], grpc.aio.Channel],
) -> None:
    channel, other_channel = connect(), connect()
    stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
    garbage = channel.unary_unary(SERVICE + "GetStatus")
    # Malformed protobuf spends the budget (a tenant's typo, parsed and refused, does not:
    # tests/api/test_fairness_relay.py).
    for _ in range(BAD_BUDGET.capacity):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await garbage(GARBAGE, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str, timedelta | None]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return _refusal(caught.value)

    async def watch() -> None:
        async for _ in stub.WatchStatus(broker_pb2.WatchStatusRequest(), timeout=30):
            pass

    # a valid call, garbage (not parsed: not INVALID_ARGUMENT) and a stream, each held
    refusals = await asyncio.gather(
        refusal(_get(stub, OTHER)), refusal(garbage(GARBAGE, timeout=30)), refusal(watch())
    )
    until_a_token = BAD_BUDGET.interval  # 20 minutes, far longer than the hold
    for code, reason, retry_after in refusals:
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_BAD_REQUESTS)
        assert retry_after is not None
        assert until_a_token - timedelta(minutes=1) < retry_after <= until_a_token
    assert (await _get(broker_pb2_grpc.CertificateBrokerServiceStub(other_channel), OTHER)).domain


@pytest.fixture
def mtls(tmp_path: Path) -> MtlsFiles:
    return MtlsFiles(tmp_path / "tls")


async def test_under_mtls_a_client_certificate_is_one_peer_across_connections(
    tmp_path: Path, mtls: MtlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = mtls.issue("broker", server=True)
    api, router = mtls.issue("api-1"), mtls.issue("router-1")
    settings = broker_settings(
        tmp_path,
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(mtls.ca),
        roles={"api-1": "api", "router-1": "router"},
        max_inflight_per_peer=2,
    )

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
        gate = Gate(handle.running.broker.get_status)
        monkeypatch.setattr(handle.running.broker, "get_status", gate.get_status)
        channels = [connect(api), connect(api), connect(api), connect(router)]
        first, second, third, routers = (
            broker_pb2_grpc.CertificateBrokerServiceStub(c) for c in channels
        )
        try:
            await _add(first, SLOW, OTHER)
            held = [asyncio.create_task(_get(stub, SLOW)) for stub in (first, second)]
            await gate.wait_entered(2)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _get(third, OTHER)  # a third connection of the same certificate
            assert _refusal(caught.value)[:2] == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                TOO_MANY_IN_FLIGHT,
            )
            assert (await _get(routers, OTHER)).domain.domain == OTHER
            gate.opened.set()
            await asyncio.gather(*held)
            assert (await _get(third, OTHER)).domain.domain == OTHER
        finally:
            for channel in channels:
                await channel.close()
