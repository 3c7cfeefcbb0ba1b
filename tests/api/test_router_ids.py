"""ReportServing over mTLS: a router_id belongs to the certificate that reported it until forgotten.

Why: any router certificate (or a stolen one) could otherwise overwrite another
router's entry, and ListRouters and GetStatus would report what it likes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2 as B
from certbroker_client.client import BrokerClient, BrokerError, TlsFiles
from tests.broker import broker_settings, started_broker
from tests.pki import NOW
from tests.roles import ROLES, mtls_settings, role_stubs
from tests.tls import MtlsFiles

INTERVAL = timedelta(seconds=10)


def _client(address: str, mtls: MtlsFiles, name: str) -> BrokerClient:
    who = mtls.issue(name)
    return BrokerClient.connect(address, tls=TlsFiles(mtls.ca, who.cert, who.key), timeout=10)


async def test_another_certificate_cannot_take_a_router_id_until_it_is_forgotten(
    tmp_path: Path,
) -> None:
    settings, mtls = mtls_settings(
        broker_settings(tmp_path, router_report_interval=INTERVAL), tmp_path / "tls"
    )
    settings = replace(settings, roles={**ROLES, "router-2": "router"})
    clock = FakeClock(NOW)
    async with (
        role_stubs(settings, mtls, clock) as stubs,
        _client(stubs.address, mtls, "router-1") as one,
        _client(stubs.address, mtls, "router-2") as two,
    ):

        async def listed() -> list[tuple[str, str, int, int, bool]]:
            reply = await stubs.api.ListRouters(B.ListRoutersRequest())
            return [
                (r.router_id, r.identity, r.applied_revision, r.domain_count, r.live)
                for r in reply.routers
            ]

        await one.report_serving("edge-1", 0, 5)
        await two.report_serving("edge-2", 0, 6)
        before = await listed()
        assert before == [("edge-1", "router-1", 0, 5, True), ("edge-2", "router-2", 0, 6, True)]

        clock.advance(INTERVAL * 3 + timedelta(seconds=1))  # edge-1 silent: stale but held
        for impostor, router_id in ((two, "edge-1"), (one, "edge-2")):
            with pytest.raises(BrokerError) as caught:
                await impostor.report_serving(router_id, 0, 99)
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.reason == "ROUTER_ID_TAKEN"
            assert "router-1" not in caught.value.message  # the holder is not named
            assert "router-2" not in caught.value.message
        assert [row[:4] for row in await listed()] == [row[:4] for row in before]  # unchanged
        await one.report_serving("edge-1", 0, 7)  # its holder still may report
        assert (await listed())[0] == ("edge-1", "router-1", 0, 7, True)

        clock.advance(INTERVAL * 10)  # exactly ten intervals: edge-1 is still held
        with pytest.raises(BrokerError) as caught:
            await two.report_serving("edge-1", 0, 99)
        assert caught.value.reason == "ROUTER_ID_TAKEN"
        clock.advance(timedelta(seconds=1))  # forgotten: the id is free again
        await two.report_serving("edge-1", 0, 8)
        [taken] = (await stubs.api.ListRouters(B.ListRoutersRequest())).routers
        assert (taken.router_id, taken.identity, taken.domain_count) == ("edge-1", "router-2", 8)
        assert taken.first_seen_time.ToDatetime().replace(tzinfo=NOW.tzinfo) == clock.now()


async def test_plaintext_callers_share_the_local_identity_and_may_reuse_any_id(
    tmp_path: Path,
) -> None:
    """A guard, not a new behaviour: without mTLS there are no identities to tell apart."""
    async with (
        started_broker(broker_settings(tmp_path), FakeClock(NOW)) as broker,
        BrokerClient.connect(broker.address, timeout=10) as first,
        BrokerClient.connect(broker.address, timeout=10) as second,
    ):
        await first.report_serving("dev-box", 0, 1)
        await second.report_serving("dev-box", 0, 2)  # the same "local" caller: as before
        [listed] = await first.list_routers()
        assert (listed.identity, listed.domain_count) == ("local", 2)


async def test_strict_mode_refuses_any_id_but_the_certificates_name(tmp_path: Path) -> None:
    settings, mtls = mtls_settings(broker_settings(tmp_path), tmp_path / "tls")
    settings = replace(settings, router_id_is_identity=True)
    async with (
        role_stubs(settings, mtls, FakeClock(NOW)) as stubs,
        _client(stubs.address, mtls, "router-1") as router,
    ):
        with pytest.raises(BrokerError) as caught:
            await router.report_serving("edge-1", 0, 1)  # an unused id, but not its name
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.reason == "ROUTER_ID_NOT_IDENTITY"
        await router.report_serving("router-1", 0, 1)
        [listed] = (await stubs.api.ListRouters(B.ListRoutersRequest())).routers
        assert (listed.router_id, listed.identity) == ("router-1", "router-1")


async def test_one_certificate_cannot_fill_the_registry(tmp_path: Path) -> None:
    """A stolen or runaway router certificate is held to its share; other routers still report."""
    settings, mtls = mtls_settings(
        broker_settings(tmp_path, router_report_interval=INTERVAL, max_routers=6),
        tmp_path / "tls",
    )
    settings = replace(settings, roles={**ROLES, "router-2": "router"})
    async with (
        role_stubs(settings, mtls, FakeClock(NOW)) as stubs,
        _client(stubs.address, mtls, "router-1") as runaway,
        _client(stubs.address, mtls, "router-2") as other,
    ):
        for n in range(3):  # half of max_routers by default
            await runaway.report_serving(f"flood-{n}", 0, 1)
        with pytest.raises(BrokerError) as caught:
            await runaway.report_serving("flood-3", 0, 1)
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.reason == "TOO_MANY_ROUTERS_FOR_IDENTITY"
        assert caught.value.retry_after is not None
        await runaway.report_serving("flood-0", 0, 2)  # its own ids still report
        for n in range(3):
            await other.report_serving(f"edge-{n}", 0, 1)
        listed = (await stubs.api.ListRouters(B.ListRoutersRequest())).routers
        assert sorted(r.router_id for r in listed) == [
            *(f"edge-{n}" for n in range(3)),
            *(f"flood-{n}" for n in range(3)),
        ]


async def test_routers_do_not_see_each_others_certificate_names(tmp_path: Path) -> None:
    settings, mtls = mtls_settings(broker_settings(tmp_path), tmp_path / "tls")
    async with (
        role_stubs(settings, mtls, FakeClock(NOW)) as stubs,
        _client(stubs.address, mtls, "router-1") as router,
    ):
        await router.report_serving("edge-1", 0, 5)
        [seen_by_api] = (await stubs.api.ListRouters(B.ListRoutersRequest())).routers
        assert seen_by_api.identity == "router-1"
        [seen_by_router] = await router.list_routers()
        assert (seen_by_router.router_id, seen_by_router.identity) == ("edge-1", "")
