"""1,000 idle HTTP-01 connections must not starve gRPC (they once shared the descriptors).

The test process starts with the common default open-file soft limit (1,024),
under which the broker used to run out of descriptors: the broker raises it at
start, caps the responder, and closes idle connections after its header timeout.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import broker_settings, started_broker

TOKEN = "exhaustion-token"
KEYAUTH = TOKEN + ".thumbprint"
IDLE = 1000
SOURCES = [f"127.0.1.{i}" for i in range(1, 21)]  # 50 each: under the default 64 per peer


@pytest.fixture
def default_soft_limit() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * IDLE:
        pytest.skip(f"hard open-file limit {hard} is too low for {IDLE} idle connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _open(port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _until_closed(sock: socket.socket) -> None:
    try:
        while await asyncio.get_running_loop().sock_recv(sock, 1024):
            pass
    except ConnectionError:
        pass


async def test_idle_responder_connections_leave_grpc_answering(
    tmp_path: Path, default_soft_limit: None
) -> None:
    settings = broker_settings(
        tmp_path,
        http01_listen=("127.0.0.1", 0),
        http01_header_timeout=timedelta(seconds=8),  # long enough to open all 1,000 first
    )
    async with started_broker(settings) as broker:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert soft > 1024  # the broker raised its own limit
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="idle.example.com", app="shop", disable_letsencrypt=True
            )
        )
        responder = broker.running.responder
        idle = [await _open(responder.port, SOURCES[i % len(SOURCES)]) for i in range(IDLE)]
        try:
            async with asyncio.timeout(20):
                while responder.open_connections < IDLE:
                    await asyncio.sleep(0.02)

            # a new client, while every one of them is held
            async with grpc.aio.insecure_channel(broker.address) as channel:
                stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
                status = await stub.GetStatus(
                    broker_pb2.GetStatusRequest(domain="idle.example.com"), timeout=10
                )
            assert status.domain.domain == "idle.example.com"
            assert responder.open_connections == IDLE

            # the header timeout closes every one of them, then a challenge is answered
            async with asyncio.timeout(60):
                await asyncio.gather(*(_until_closed(sock) for sock in idle))
            assert responder.open_connections == 0
        finally:
            for sock in idle:
                sock.close()
        responder.add(TOKEN, KEYAUTH)
        reader, writer = await asyncio.open_connection("127.0.0.1", responder.port)
        writer.write(
            f"GET /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
        )
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(len(KEYAUTH))
        writer.close()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == KEYAUTH.encode()
