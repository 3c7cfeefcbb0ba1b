"""Unary calls and error decoding, against the fake broker and synthetic errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import grpc.aio
import pytest

from certbroker_client import BrokerClient, BrokerError, FieldViolation
from tests.client.fake import FakeBroker, FakeServer, domain, rich_status, trailers


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = FakeServer(FakeBroker())
    await server.start()
    yield server
    await server.stop()


async def test_list_domains_follows_every_page(fake: FakeServer) -> None:
    for i in range(25):
        fake.broker.domains[f"d{i:02}.example.com"] = domain(
            f"d{i:02}.example.com", i, app="a" if i % 2 else "b"
        )
    async with BrokerClient.connect(fake.addr) as client:
        names = [d.domain async for d in client.list_domains(page_size=7)]
        only_a = [d.domain async for d in client.list_domains("a", page_size=4)]
    assert names == sorted(fake.broker.domains)
    assert len(only_a) == 12


async def test_not_found_is_decoded(fake: FakeServer) -> None:
    async with BrokerClient.connect(fake.addr) as client:
        with pytest.raises(BrokerError) as info:
            await client.get_status("www.example.com")
    err = info.value
    assert err.code is grpc.StatusCode.NOT_FOUND
    assert err.reason == "DOMAIN_NOT_FOUND"
    assert str(err) == "NOT_FOUND (DOMAIN_NOT_FOUND): domain www.example.com is not known"


async def test_violations_and_retry_info_are_decoded(fake: FakeServer) -> None:
    fake.broker.unary_error = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad domain",
        reason="INVALID_DOMAIN",
        violations=[("domain", "a label is longer than 63 characters")],
        retry_after=timedelta(seconds=30),
    )
    async with BrokerClient.connect(fake.addr) as client:
        with pytest.raises(BrokerError) as info:
            await client.get_status("x")
    err = info.value
    assert err.violations == (FieldViolation("domain", "a label is longer than 63 characters"),)
    assert err.retry_after == timedelta(seconds=30)
    assert err.reason == "INVALID_DOMAIN"


async def test_connection_refused_is_unavailable() -> None:
    from tests.infra.ports import free_port

    async with BrokerClient.connect(f"127.0.0.1:{free_port()}", timeout=5) as client:
        with pytest.raises(BrokerError) as info:
            await client.get_status("www.example.com")
    assert info.value.code_name == "UNAVAILABLE"


def test_error_without_rich_details() -> None:
    err = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom", None
    )
    decoded = BrokerError.from_rpc_error(err)
    assert (decoded.code_name, decoded.reason, decoded.message) == ("INTERNAL", "", "boom")


def test_inconsistent_rich_details_are_ignored() -> None:
    """A status proto that disagrees with the call's code must not hide the error."""
    status = rich_status(grpc.StatusCode.NOT_FOUND, "other", reason="X")
    err = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*trailers(status)),
        "boom",
        None,
    )
    decoded = BrokerError.from_rpc_error(err)
    assert (decoded.code_name, decoded.reason) == ("INTERNAL", "")
