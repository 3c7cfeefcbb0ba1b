"""Tracing: a span per RPC when an exporter is configured, nothing installed when it is off."""

from __future__ import annotations

from pathlib import Path

import grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from certbroker.server import run
from certbroker.telemetry import tracer_provider
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import broker_settings


def test_tracing_is_off_unless_an_exporter_is_configured() -> None:
    assert tracer_provider("none") is None
    assert tracer_provider("console") is not None


async def test_every_rpc_gets_a_span(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    running = await run(broker_settings(tmp_path), span_exporter=spans)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
            await stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(
                    domain="www.example.com", app="shop", disable_letsencrypt=True
                )
            )
            await stub.GetStatus(broker_pb2.GetStatusRequest(domain="www.example.com"))
            stream = stub.WatchStatus(broker_pb2.WatchStatusRequest())
            async for _ in stream:
                break
            stream.cancel()
    finally:
        await running.stop(0)
    names = {span.name for span in spans.get_finished_spans()}
    service = "/certbroker.v1.CertificateBrokerService"
    for method in ("IssueCertificate", "GetStatus", "WatchStatus"):
        assert f"{service}/{method}" in names, names
