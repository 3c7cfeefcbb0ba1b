"""The plaintext health-only listener: Health answers, nothing else does, status in step."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from certbroker.server import SERVICE_NAME, StartupError, run
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import broker_settings, started_broker

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10
    )
    return int(reply.status)


async def test_health_listener_serves_health_and_nothing_else(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        port = broker.running.health_port
        assert port is not None and port != broker.running.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await _status(channel) == SERVING
            assert await _status(channel, SERVICE_NAME) == SERVING

            stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetStatus(broker_pb2.GetStatusRequest(domain="a.example"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListDomains(broker_pb2.ListDomainsRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in reflection.ServerReflectionInfo(iter([request]), timeout=10):
                    pass
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_listener_follows_the_main_servers_status(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        address = f"127.0.0.1:{broker.running.health_port}"
        async with grpc.aio.insecure_channel(address) as channel:
            await broker.running.health.set(SERVICE_NAME, NOT_SERVING)
            assert await _status(channel, SERVICE_NAME) == NOT_SERVING
            assert await _status(broker.channel, SERVICE_NAME) == NOT_SERVING
            await broker.running.health.enter_graceful_shutdown()  # what stop() does first
            assert await _status(channel) == NOT_SERVING


async def test_health_listener_off(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path, health_listen=None)) as broker:
        assert broker.running.health_port is None
        assert await _status(broker.channel) == SERVING  # the main port keeps Health


async def test_a_health_port_already_held_by_a_grpc_server_stops_the_start(
    tmp_path: Path,
) -> None:
    """gRPC shares ports by default (SO_REUSEPORT); the broker must fail instead."""
    other = grpc.aio.server()  # default options: SO_REUSEPORT on, as another broker's would be
    port = other.add_insecure_port("127.0.0.1:0")
    await other.start()
    try:
        settings = broker_settings(tmp_path, health_listen=("127.0.0.1", port))
        with pytest.raises(StartupError, match=r"^CERTBROKER_HEALTH_LISTEN=127\.0\.0\.1:\d+"):
            await run(settings)
        # nothing left behind: the same settings start once the port is free
        await other.stop(0)
        async with started_broker(replace(settings, health_listen=("127.0.0.1", 0))) as broker:
            assert broker.running.health_port is not None
    finally:
        await other.stop(0)


async def test_garbage_to_the_health_listener_is_refused_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any local process can reach the plaintext listener: garbage must not fill the log."""
    garbage = b"\xff\xff\xff\xff\x0f" * 20  # a varint longer than protobuf allows
    async with started_broker(broker_settings(tmp_path)) as broker:
        address = f"127.0.0.1:{broker.running.health_port}"
        async with grpc.aio.insecure_channel(address) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError) as caught:
                await check(garbage, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert await _status(channel) == SERVING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
