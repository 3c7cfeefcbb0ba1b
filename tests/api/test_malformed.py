"""Requests that do not parse as protobuf: INVALID_ARGUMENT through the mapper, no traceback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certbroker.v1 import broker_pb2
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.rpc import details

GARBAGE = b"\xff\xff\xff\xff\x0f" * 20  # a varint longer than protobuf allows
SERVICE = "/certbroker.v1.CertificateBrokerService/"


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrokerHandle]:
    async with started_broker(broker_settings(tmp_path_factory.mktemp("malformed"))) as handle:
        yield handle


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("GetStatus", "certbroker.v1.GetStatusRequest"),
        ("IssueCertificate", "certbroker.v1.IssueCertificateRequest"),
        ("UploadCustom", "certbroker.v1.UploadCustomRequest"),
    ],
)
async def test_garbage_to_a_unary_method_is_a_field_violation(
    broker: BrokerHandle, caplog: pytest.LogCaptureFixture, method: str, message: str
) -> None:
    call = broker.channel.unary_unary(SERVICE + method)
    with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(GARBAGE, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value) == (
        "REQUEST_MALFORMED",
        [
            (
                "request",
                f"is not a valid {message} message (100 bytes that do not parse as protobuf)",
            )
        ],
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_garbage_to_watch_status_is_a_field_violation(
    broker: BrokerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    call = broker.channel.unary_stream(SERVICE + "WatchStatus")
    with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call(GARBAGE, timeout=5):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value)[0] == "REQUEST_MALFORMED"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_health_check_and_watch_still_work_and_refuse_garbage(broker: BrokerHandle) -> None:
    health = health_pb2_grpc.HealthStub(broker.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stream = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
    first = await stream.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()
    call = broker.channel.unary_unary("/grpc.health.v1.Health/Check")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(GARBAGE, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_well_formed_requests_reach_the_servicer(broker: BrokerHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain="nope.example.com"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
