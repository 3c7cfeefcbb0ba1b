"""Logging set-up: JSON lines with trace ids inside an RPC, levels for certbroker only."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from certbroker.config import Settings
from certbroker.server import run
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import broker_settings, started_broker
from tests.observe import captured_logs, json_lines, span_hex, trace_hex

RPC = "/certbroker.v1.CertificateBrokerService/IssueCertificate"


async def test_json_lines_parse_and_carry_the_rpcs_trace_id(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    with captured_logs(Settings(log_format="json")) as buffer:
        running = await run(broker_settings(tmp_path), span_exporter=spans)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
                await stub.IssueCertificate(
                    broker_pb2.IssueCertificateRequest(
                        domain="json.example.com", app="shop", disable_letsencrypt=True
                    )
                )
        finally:
            await running.stop(0)
    lines = json_lines(buffer)
    (added,) = [
        line for line in lines if line["message"].startswith("domain json.example.com added")
    ]
    assert added["level"] == "INFO"
    assert added["logger"] == "certbroker.journal"
    assert (added["domain"], added["app"], added["to_state"]) == (
        "json.example.com",
        "shop",
        "DISABLED",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", added["time"])
    (rpc,) = [s for s in spans.get_finished_spans() if s.name == RPC]
    in_trace = {span_hex(s) for s in spans.get_finished_spans() if trace_hex(s) == trace_hex(rpc)}
    assert added["trace_id"] == trace_hex(rpc)
    assert added["span_id"] in in_trace  # the RPC's span or its store.write child
    (listening,) = [line for line in lines if line["message"].startswith("certbroker started")]
    assert "trace_id" not in listening  # outside any span: no ids


async def test_debug_applies_to_certbroker_loggers_only(tmp_path: Path) -> None:
    with captured_logs(Settings(log_level="DEBUG", log_format="json")) as buffer:
        assert logging.getLogger("certbroker.scheduler").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.INFO)
        async with started_broker(broker_settings(tmp_path)) as broker:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain="quiet.example.com", app="shop")
            )
            await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain="quiet.example.com"))
    loggers = {line["logger"] for line in json_lines(buffer)}
    assert loggers and all(name.startswith("certbroker") for name in loggers), loggers


async def test_library_level_is_its_own_setting(tmp_path: Path) -> None:
    """CERTBROKER_LOG_LEVEL_LIBRARIES=DEBUG lets aiosqlite speak (the test above can fail)."""
    settings = Settings(log_level="INFO", log_level_libraries="DEBUG", log_format="json")
    with captured_logs(settings) as buffer:
        assert not logging.getLogger("certbroker.scheduler").isEnabledFor(logging.DEBUG)
        async with started_broker(broker_settings(tmp_path)) as broker:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(
                    domain="loud.example.com", app="shop", disable_letsencrypt=True
                )
            )
    assert any(line["logger"] == "aiosqlite" for line in json_lines(buffer))


def test_text_is_the_readable_default() -> None:
    with captured_logs(Settings()) as buffer:
        logging.getLogger("certbroker.test").info("hello %s", "there")
    (line,) = buffer.getvalue().splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO certbroker.test: hello there", line
    )
