"""ReportServing and ListRouters over gRPC: who may report, what is refused, and the bounds."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from certbroker.clock import FakeClock
from certbroker_client.client import BrokerClient, BrokerError, TlsFiles
from tests.broker import broker_settings, started_broker
from tests.pki import NOW
from tests.tls import MtlsFiles


async def test_only_the_router_role_may_report_over_mtls(tmp_path: Path) -> None:
    mtls = MtlsFiles(tmp_path / "tls")
    server = mtls.issue("broker", server=True)
    router, api, admin = mtls.issue("router-1"), mtls.issue("api-1"), mtls.issue("ops")
    settings = broker_settings(
        tmp_path,
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(mtls.ca),
        roles={"router-1": "router", "api-1": "api", "ops": "admin"},
    )
    async with started_broker(settings, FakeClock(NOW)) as broker:

        def client(who: object) -> BrokerClient:
            identity = who  # an Identity from MtlsFiles
            return BrokerClient.connect(
                broker.address,
                tls=TlsFiles(mtls.ca, identity.cert, identity.key),  # type: ignore[attr-defined]
                timeout=10,
            )

        async with client(router) as as_router, client(api) as as_api, client(admin) as as_admin:
            assert await as_router.report_serving("edge-1", 0, 0) == 0
            assert as_router.report_interval == timedelta(seconds=10)
            for refused in (as_api, as_admin):
                with pytest.raises(BrokerError) as caught:
                    await refused.report_serving("edge-2", 0, 0)
                assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
                assert caught.value.reason == "ROLE_FORBIDDEN"
            [listed] = await as_api.list_routers()  # reading the list is READ
            assert (listed.router_id, listed.identity, listed.live) == ("edge-1", "router-1", True)
            assert [r.router_id for r in await as_router.list_routers()] == ["edge-1"]


async def test_plaintext_callers_may_report_and_bad_reports_name_their_fields(
    tmp_path: Path,
) -> None:
    settings = broker_settings(tmp_path, max_routers=2, router_report_interval=timedelta(seconds=3))
    async with (
        started_broker(settings, FakeClock(NOW)) as broker,
        BrokerClient.connect(broker.address, timeout=10) as local,
    ):
        assert await local.report_serving("dev-box", 0, 0) == 0
        added = await local.issue_certificate("a.example.test", "shop", disable_letsencrypt=True)
        # The reply carries the broker's current revision (its event hub's, a moment behind
        # the commit): the report that follows the change sees it.
        deadline = asyncio.get_running_loop().time() + 10
        while await local.report_serving("dev-box", 1, 3) < added.revision:
            assert asyncio.get_running_loop().time() < deadline, "the revision never showed"
            await asyncio.sleep(0.02)
        assert local.report_interval == timedelta(seconds=3)
        [listed] = await local.list_routers()
        assert (listed.identity, listed.applied_revision, listed.domain_count) == ("local", 1, 3)
        assert listed.last_seen_time.ToDatetime().replace(tzinfo=NOW.tzinfo) == NOW

        with pytest.raises(BrokerError) as caught:
            await local.report_serving("bad id", -1, 0)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in caught.value.violations] == ["router_id", "applied_revision"]

        await local.report_serving("dev-2", 1, 0)
        with pytest.raises(BrokerError) as caught:
            await local.report_serving("dev-3", 1, 0)
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.reason == "TOO_MANY_ROUTERS"
        assert caught.value.retry_after == timedelta(seconds=3)
        assert await local.report_serving("dev-2", 1, 0) == 1  # a known router still may
