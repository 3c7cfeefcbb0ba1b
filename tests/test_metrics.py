"""The Prometheus endpoint of a real in-process broker, read with a real HTTP GET.

No CA here (custom certificates and parked domains); the issuance figures
against Pebble are in tests/integration/test_telemetry.py.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import grpc
import pytest

from certbroker.clock import FakeClock
from certbroker.config import Settings
from certbroker.metrics import Metrics
from certbroker.model import Domain, LetsEncryptState, Source
from certbroker.server import StartupError, run
from certbroker.store.base import Change
from certbroker.v1 import broker_pb2
from tests.broker import broker_settings, started_broker
from tests.integration.lab import wait_status
from tests.observe import samples, scrape, value
from tests.pki import NOW, TestPKI

PKI = TestPKI()
EXPIRY = "certbroker_certificate_expiration_timestamp_seconds"


def _settings(tmp: Path, **overrides: Any) -> Settings:
    trust = tmp / "trust.pem"
    trust.write_bytes(PKI.root.pem)
    return broker_settings(
        tmp, **{"trust_bundle": str(trust), "metrics_listen": ("127.0.0.1", 0), **overrides}
    )


async def test_scrape_shows_expiry_states_rpcs_watchers_and_writes(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    leaf = PKI.leaf("custom.example.com")
    async with started_broker(settings, FakeClock(NOW)) as broker:
        stub = broker.stub
        port = broker.running.metrics_port
        assert port is not None
        await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="custom.example.com", app="shop", disable_letsencrypt=True
            )
        )
        await stub.UploadCustom(
            broker_pb2.UploadCustomRequest(
                domain="custom.example.com",
                app="shop",
                certificate=PKI.bundle(leaf),
                private_key=leaf.key_pem(),
            )
        )
        # Let's Encrypt wanted, no CA configured: parked in PENDING_DNS with NOT_CONFIGURED.
        await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain="parked.example.com", app="blog")
        )
        await wait_status(
            stub, "parked.example.com", lambda d: d.retry.last_error_reason == "NOT_CONFIGURED"
        )
        with pytest.raises(grpc.RpcError):
            await stub.GetStatus(broker_pb2.GetStatusRequest(domain="unknown.example.com"))
        stream = stub.WatchStatus(broker_pb2.WatchStatusRequest())
        async for reply in stream:
            if reply.event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                break

        text = await scrape(port)
        stream.cancel()

    expiry = samples(text, EXPIRY)
    assert expiry == [
        (
            {"domain": "custom.example.com", "app": "shop", "source": "CUSTOM"},
            leaf.cert.not_valid_after_utc.timestamp(),
        )
    ]  # nothing serves the parked domain: no series for it
    assert value(text, "certbroker_domains", state="DISABLED") == 1
    assert value(text, "certbroker_domains", state="PENDING_DNS") == 1
    assert value(text, "certbroker_domains", state="IN_USE") == 0
    assert value(text, "certbroker_rpc_requests_total", method="GetStatus", code="NOT_FOUND") == 1
    assert value(text, "certbroker_rpc_requests_total", method="UploadCustom", code="OK") == 1
    assert value(text, "certbroker_rpc_requests_total", method="IssueCertificate", code="OK") == 2
    assert value(text, "certbroker_watch_subscribers") == 1
    assert value(text, "certbroker_watch_lag_revisions") == 0
    writes = value(text, "certbroker_store_write_duration_seconds_count")
    assert writes is not None and writes >= 3
    assert value(text, "certbroker_scheduler_busy_domains") == 0
    assert value(text, "certbroker_ca_available") == 1  # no CA failure seen: orders not paused
    assert value(text, "certbroker_ca_paused_seconds_total") == 0
    assert value(text, "certbroker_quota_limit", quota="registered_domain") == 50
    assert value(text, "certbroker_quota_held_domains", reason="QUOTA_NAME_SET") == 0


async def test_gauges_survive_a_restart_and_follow_a_removal(tmp_path: Path) -> None:
    """The fleet index is loaded from the store at start, not rebuilt from later writes."""
    settings = _settings(tmp_path)
    leaf = PKI.leaf("kept.example.com")
    async with started_broker(settings, FakeClock(NOW)) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="kept.example.com", app="shop", disable_letsencrypt=True
            )
        )
        await broker.stub.UploadCustom(
            broker_pb2.UploadCustomRequest(
                domain="kept.example.com",
                app="shop",
                certificate=PKI.bundle(leaf),
                private_key=leaf.key_pem(),
            )
        )
    async with started_broker(settings, FakeClock(NOW)) as broker:
        assert broker.running.metrics_port is not None
        text = await scrape(broker.running.metrics_port)
        assert value(text, EXPIRY, domain="kept.example.com") == (
            leaf.cert.not_valid_after_utc.timestamp()
        )
        assert value(text, "certbroker_domains", state="DISABLED") == 1
        await broker.stub.RemoveDomain(
            broker_pb2.RemoveDomainRequest(domain="kept.example.com", app="shop")
        )
        text = await scrape(broker.running.metrics_port)
        assert samples(text, EXPIRY) == []
        assert value(text, "certbroker_domains", state="DISABLED") == 0


async def test_metrics_port_in_use_stops_the_start_naming_the_variable(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = _settings(tmp_path, metrics_listen=("127.0.0.1", port))
        with pytest.raises(StartupError, match="CERTBROKER_METRICS_LISTEN"):
            await run(settings)


def test_the_default_metrics_keep_nothing() -> None:
    """Metrics off: no fleet index is kept (the commit path pays nothing for it)."""
    metrics = Metrics()
    domain = Domain(
        name="a.example.com",
        app="shop",
        letsencrypt_enabled=False,
        le_state=LetsEncryptState.DISABLED,
        serving=Source.NONE,
        created_at=NOW,
        updated_at=NOW,
    )
    metrics.domains_changed([Change(None, domain)], 0.001)
    assert metrics.fleet.snapshot() == []
    assert not metrics.enabled
