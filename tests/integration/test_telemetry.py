"""Telemetry of a real issuance (Pebble, challtestsrv): the scrape, the trace, the logs."""

from __future__ import annotations

from pathlib import Path

import grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from certbroker.config import Settings
from certbroker.server import run
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import started_broker
from tests.infra.pebble import Pebble
from tests.integration.lab import Lab, in_use, unique_domain, wait_status
from tests.observe import attribute, captured_logs, json_lines, samples, scrape, value

DOMAIN = "certbroker.domain"
#: What one issuance's trace must hold: the step, its checks, the order and its parts.
STEPS = {
    "certbroker.step",
    "dns.points",
    "dns.caa",
    "acme.order",
    "acme.new_order",
    "acme.authorization",
    "acme.answer",
    "acme.finalize",
    "acme.download",
    "store.certificate",
    "store.write",
}


async def test_scrape_after_an_issuance_shows_its_expiry_and_the_counts(
    lab: Lab, tmp_path: Path
) -> None:
    name = unique_domain()
    settings = lab.settings(tmp_path, metrics_listen=("127.0.0.1", 0))
    async with started_broker(settings) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        )
        status = await wait_status(broker.stub, name, in_use)
        assert broker.running.metrics_port is not None
        text = await scrape(broker.running.metrics_port)
    not_after = status.lets_encrypt_certificate.not_after.ToSeconds()
    assert samples(text, "certbroker_certificate_expiration_timestamp_seconds") == [
        ({"domain": name, "app": "shop", "source": "LETS_ENCRYPT"}, float(not_after))
    ]
    assert value(text, "certbroker_domains", state="IN_USE") == 1
    assert value(text, "certbroker_domains", state="PENDING_DNS") == 0
    assert value(text, "certbroker_orders_total", outcome="issued", reason="") == 1
    assert value(text, "certbroker_order_duration_seconds_count") == 1
    assert value(text, "certbroker_domain_ready_duration_seconds_count") == 1
    assert value(text, "certbroker_dns_checks_total", check="points", outcome="DNS_OK") == 1
    assert value(text, "certbroker_dns_checks_total", check="caa", outcome="CAA_OK") == 1


async def test_an_issuance_is_one_trace_of_its_steps(lab: Lab, tmp_path: Path) -> None:
    name = unique_domain()
    spans = InMemorySpanExporter()
    running = await run(lab.settings(tmp_path), span_exporter=spans)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
            await stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="shop"))
            await wait_status(stub, name, in_use)
    finally:
        await running.stop(0)
    finished = spans.get_finished_spans()
    (order,) = [s for s in finished if s.name == "acme.order"]
    assert order.context is not None
    trace: list[ReadableSpan] = [
        s
        for s in finished
        if s.context is not None and s.context.trace_id == order.context.trace_id
    ]
    names = {s.name for s in trace}
    assert names >= STEPS, STEPS - names
    (root,) = [s for s in trace if s.parent is None]
    assert root.name == "certbroker.step"
    for step in STEPS - {"store.write"}:  # writes without a domain row (the order URL) have none
        assert all(attribute(s, DOMAIN) == name for s in trace if s.name == step), step
    # The ACME requests ran in the issuer's worker threads, yet belong to the order's trace.
    by_id = {s.context.span_id: s for s in trace if s.context is not None}
    (finalize,) = [s for s in trace if s.name == "acme.finalize"]
    chain = []
    parent = finalize.parent
    while parent is not None:
        chain.append(by_id[parent.span_id].name)
        parent = by_id[parent.span_id].parent
    assert chain == ["acme.order", "certbroker.step"]
    assert all(s.status.is_ok for s in trace)


async def test_a_failed_order_logs_the_cas_problem_detail(
    lab: Lab, failing_ca: Pebble, tmp_path: Path
) -> None:
    name = unique_domain()
    settings = lab.settings(
        tmp_path, acme_directory=failing_ca.directory_url, acme_ca_bundle=failing_ca.ca_bundle_path
    )
    with captured_logs(Settings(log_format="json")) as buffer:
        async with started_broker(settings) as broker:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop")
            )
            failed = await wait_status(broker.stub, name, lambda d: d.retry.attempt == 1)
    detail = failed.retry.last_error_message
    reason = failed.retry.last_error_reason
    assert reason.startswith("ACME_") and detail and detail != reason
    lines = [line for line in json_lines(buffer) if line.get("domain") == name]
    (order,) = [line for line in lines if line["message"].startswith(f"order for {name} failed")]
    assert order["level"] == "WARNING"
    assert order["reason"] == reason
    assert detail in order["message"]  # the CA's words, not only the reason code
    assert "urn:ietf:params:acme:error:" in order["message"]
    (journal,) = [
        line
        for line in lines
        if line.get("reason") == reason
        and "from_state" not in line
        and line["logger"] == "certbroker.journal"
    ]
    assert detail in journal["message"]
