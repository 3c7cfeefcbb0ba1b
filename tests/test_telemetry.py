"""Tracing: a span per RPC when an exporter is configured, nothing installed when it is off.

Failed RPCs carry their real code. The spans of an issuance (scheduler, DNS,
ACME) are in tests/integration/test_telemetry.py.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from certbroker.server import run
from certbroker.telemetry import tracer_provider
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import broker_settings
from tests.observe import attribute


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


async def test_failed_rpcs_carry_their_grpc_code_and_error_status(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    running = await run(broker_settings(tmp_path), span_exporter=spans)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
            await stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(
                    domain="ok.example.com", app="shop", disable_letsencrypt=True
                )
            )
            for call in (
                stub.GetStatus(broker_pb2.GetStatusRequest(domain="unknown.example.com")),
                stub.IssueCertificate(
                    broker_pb2.IssueCertificateRequest(domain="not a name", app="shop")
                ),
            ):
                with pytest.raises(grpc.RpcError):
                    await call
            stream = stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=-1))
            with pytest.raises(grpc.RpcError) as refused:
                async for _ in stream:
                    pass
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await running.stop(0)
    service = "/certbroker.v1.CertificateBrokerService"
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    (not_found,) = by_name[f"{service}/GetStatus"]
    assert attribute(not_found, "rpc.grpc.status_code") == grpc.StatusCode.NOT_FOUND.value[0]
    assert not_found.status.status_code is StatusCode.ERROR
    assert "NOT_FOUND" in (not_found.status.description or "")
    ok, invalid = sorted(
        by_name[f"{service}/IssueCertificate"], key=lambda s: s.status.status_code.value
    )
    assert attribute(ok, "rpc.grpc.status_code") == 0
    assert ok.status.status_code is StatusCode.UNSET
    assert attribute(invalid, "rpc.grpc.status_code") == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert invalid.status.status_code is StatusCode.ERROR
    (watch,) = by_name[f"{service}/WatchStatus"]
    assert attribute(watch, "rpc.grpc.status_code") == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert watch.status.status_code is StatusCode.ERROR
