"""The sync agents' reports reach the broker: ``report_hook`` through ``ReportServing``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from certbroker.clock import FakeClock
from certbroker_client.client import BrokerClient
from certbroker_client.sync.cli import report_hook
from tests.broker import broker_settings, started_broker
from tests.pki import NOW


async def test_report_hook_reports_and_returns_the_brokers_interval(tmp_path: Path) -> None:
    settings = broker_settings(tmp_path, router_report_interval=timedelta(seconds=7))
    async with (
        started_broker(settings, FakeClock(NOW)) as broker,
        BrokerClient.connect(broker.address, timeout=10) as client,  # plaintext: local may report
    ):
        report = report_hook(client, "haproxy-edge-1")
        assert await report(0, 3) == 7.0
        [listed] = await client.list_routers()
        assert (listed.router_id, listed.applied_revision, listed.domain_count, listed.live) == (
            "haproxy-edge-1",
            0,
            3,
            True,
        )
