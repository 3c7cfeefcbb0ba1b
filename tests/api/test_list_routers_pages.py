"""ListRouters in pages over mTLS: each router once, in id order; bad pages refused."""

from __future__ import annotations

import asyncio
import base64
import random
from pathlib import Path

import grpc
import pytest

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2 as B
from certbroker_client.client import BrokerClient, BrokerError, TlsFiles
from tests.broker import broker_settings
from tests.pki import NOW
from tests.roles import mtls_settings, role_stubs

ROUTERS = 2500


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_pages_list_each_of_2500_routers_once_in_order(tmp_path: Path) -> None:
    settings, mtls = mtls_settings(broker_settings(tmp_path), tmp_path / "tls")
    router = mtls.issue("router-1")
    ids = [f"edge-{n:04d}.pool-{n % 7}" for n in range(ROUTERS)]
    async with (
        role_stubs(settings, mtls, FakeClock(NOW)) as stubs,
        BrokerClient.connect(
            stubs.address, tls=TlsFiles(mtls.ca, router.cert, router.key), timeout=30
        ) as as_router,
    ):
        shuffled = random.Random(15).sample(ids, len(ids))
        for start in range(0, ROUTERS, 250):  # concurrent, but not 2,500 calls at once
            await asyncio.gather(
                *(as_router.report_serving(i, 1, 3) for i in shuffled[start : start + 250])
            )

        pages: list[list[str]] = []
        token = ""
        while True:
            request = B.ListRoutersRequest(page_size=1000, page_token=token)
            reply = await stubs.api.ListRouters(request)
            assert reply.ByteSize() < 1024 * 1024  # far below the 4 MiB reply limit
            assert all(r.lag == reply.current_revision - 1 for r in reply.routers)
            pages.append([r.router_id for r in reply.routers])
            token = reply.next_page_token
            if not token:
                break
        assert [len(page) for page in pages] == [1000, 1000, 500]
        assert [i for page in pages for i in page] == sorted(ids)

        default = await stubs.api.ListRouters(B.ListRoutersRequest())
        assert len(default.routers) == 1000 and default.next_page_token
        huge = await stubs.api.ListRouters(B.ListRoutersRequest(page_size=1_000_000))
        assert len(huge.routers) == 1000  # more than the maximum is the maximum

        # The client library follows the pages.
        assert [r.router_id for r in await as_router.list_routers(page_size=300)] == sorted(ids)
        # GetStatus gives counts, not lists: every router is counted whatever the page size.
        issued = await stubs.api.IssueCertificate(
            B.IssueCertificateRequest(
                domain="pages.example.test", app="shop", disable_letsencrypt=True
            )
        )
        assert (await stubs.status(issued.domain.domain)).known_routers == ROUTERS


@pytest.mark.parametrize(
    ("page_size", "page_token", "fields", "reason"),
    [
        (-1, "", ["page_size"], "PAGE_SIZE_INVALID"),
        (0, "garbage!", ["page_token"], "PAGE_TOKEN_INVALID"),
        (0, "QUFB" * 10_000, ["page_token"], "PAGE_TOKEN_INVALID"),
        (0, _b64("after:edge-1"), ["page_token"], "PAGE_TOKEN_INVALID"),  # a ListDomains token
        (0, _b64("router-after:not an id"), ["page_token"], "PAGE_TOKEN_INVALID"),
        (-3, "garbage!", ["page_size", "page_token"], "PAGE_SIZE_INVALID"),
    ],
)
async def test_bad_pages_are_invalid_argument_naming_the_field(
    tmp_path: Path, page_size: int, page_token: str, fields: list[str], reason: str
) -> None:
    settings, mtls = mtls_settings(broker_settings(tmp_path), tmp_path / "tls")
    async with role_stubs(settings, mtls, FakeClock(NOW)) as stubs:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.api.ListRouters(
                B.ListRoutersRequest(page_size=page_size, page_token=page_token)
            )
        error = BrokerError.from_rpc_error(caught.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.reason, [v.field for v in error.violations]) == (reason, fields)
        assert len(error.message) < 500  # the token is not echoed back
