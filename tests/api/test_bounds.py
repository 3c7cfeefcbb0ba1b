"""Bounded input through the real server: oversized requests are refused cheaply and precisely.

Everything over one of the broker's own limits but under gRPC's receive limit
(256 KiB) is INVALID_ARGUMENT with a field violation; bigger messages are refused
by gRPC itself with RESOURCE_EXHAUSTED before the broker sees them. Either way,
other callers keep being answered while it happens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from certbroker.api import servicer
from certbroker.bounds import MAX_RECEIVE_MESSAGE_BYTES
from certbroker.clock import FakeClock
from certbroker.tenancy import MAX_APP_LENGTH
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.pki import NOW, TestPKI
from tests.rpc import details

PKI = TestPKI("Bounds")
KNOWN = "ok.bounds.example"
#: ~200 KB of bad labels: under the receive limit, so the broker itself must refuse it.
BIG_BAD_DOMAIN = "-a." * 66_000
#: ~2 MB: over the receive limit. Before the limits, one of these held every RPC ~5 s.
HUGE_BAD_DOMAIN = "-a." * 700_000
#: Every call here gets this long; a stalled event loop shows up as DEADLINE_EXCEEDED.
DEADLINE = 5.0


@dataclass
class Env:
    broker: BrokerHandle

    @property
    def stub(self) -> broker_pb2_grpc.CertificateBrokerServiceStub:
        return self.broker.stub


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("bounds")
    trust = tmp / "trust.pem"
    trust.write_bytes(PKI.root.pem)
    settings = broker_settings(tmp, trust_bundle=str(trust))
    async with started_broker(settings, FakeClock(NOW)) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=KNOWN, app="shop", disable_letsencrypt=True)
        )
        yield Env(broker)


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def _watch_refused(stub: object, request: broker_pb2.WatchStatusRequest) -> grpc.RpcError:
    stream = stub.WatchStatus(request, timeout=DEADLINE)  # type: ignore[attr-defined]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    return caught.value


def _transport_refused(error: grpc.aio.AioRpcError) -> None:
    """gRPC's own refusal of a message over the receive limit (no broker details)."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{MAX_RECEIVE_MESSAGE_BYTES}" in (error.details() or "")


async def test_oversized_domains_are_refused_while_other_callers_are_answered(env: Env) -> None:
    done = asyncio.Event()

    async def abuse() -> None:
        try:
            for _ in range(3):
                calls = [
                    env.stub.GetStatus(
                        broker_pb2.GetStatusRequest(domain=domain), timeout=DEADLINE * 4
                    )
                    for domain in (BIG_BAD_DOMAIN, HUGE_BAD_DOMAIN, HUGE_BAD_DOMAIN)
                ]
                big, *huge = await asyncio.gather(*(_refused(c) for c in calls))
                assert big.code() == grpc.StatusCode.INVALID_ARGUMENT
                reason, violations = details(big)
                assert reason == "DOMAIN_INVALID"
                assert violations == [("domain", f"is {len(BIG_BAD_DOMAIN)} characters, over 253")]
                for error in huge:
                    _transport_refused(error)
        finally:
            done.set()

    async def poll() -> int:
        answered = 0
        while not done.is_set() or answered == 0:
            reply = await env.stub.GetStatus(
                broker_pb2.GetStatusRequest(domain=KNOWN), timeout=DEADLINE
            )
            assert reply.domain.domain == KNOWN
            answered += 1
            await asyncio.sleep(0.005)
        return answered

    _, answered = await asyncio.gather(abuse(), poll())
    assert answered >= 1


async def test_a_long_app_filter_entry_is_refused(env: Env) -> None:
    request = broker_pb2.WatchStatusRequest(apps=["shop", "a" * 200])
    error = await _watch_refused(env.stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error) == (
        "FILTER_TOO_LARGE",
        [("apps[1]", f"is 200 characters; the limit is {MAX_APP_LENGTH}")],
    )


@pytest.mark.parametrize("field", ["apps", "domains"])
async def test_a_watch_filter_over_1000_entries_is_refused_before_any_is_read(
    env: Env, field: str
) -> None:
    entries = [f"n{i}.example.com" for i in range(1001)]
    error = await _watch_refused(env.stub, broker_pb2.WatchStatusRequest(**{field: entries}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error) == ("FILTER_TOO_LARGE", [(field, "has 1001 entries; the limit is 1000")])


async def test_a_filter_of_60k_names_is_refused_by_count_and_200k_by_grpc(env: Env) -> None:
    # 60,000 bad names (240 KB) fit the receive limit: refused by count, none parsed.
    names = ["-."] * 60_000
    error = await _watch_refused(env.stub, broker_pb2.WatchStatusRequest(domains=names))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error)[1] == [("domains", "has 60000 entries; the limit is 1000")]
    many = [f"n{i}.example.com" for i in range(200_000)]
    _transport_refused(await _watch_refused(env.stub, broker_pb2.WatchStatusRequest(domains=many)))
    # The broker still answers.
    reply = await env.stub.GetStatus(broker_pb2.GetStatusRequest(domain=KNOWN), timeout=DEADLINE)
    assert reply.domain.domain == KNOWN


async def test_a_thousand_bad_filter_names_come_back_bounded_with_a_count(env: Env) -> None:
    # One violation each; the first ones quote non-ASCII labels (three bytes a character
    # once percent-encoded): the worst case for the reply's size.
    names = ["ü" * 60 + f"{i}.de" for i in range(10)] + [f"x_{i}.example" for i in range(990)]
    error = await _watch_refused(env.stub, broker_pb2.WatchStatusRequest(domains=names))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED
    _, violations = details(error)
    assert violations[0][0] == "domains[0]"
    assert "is not valid IDNA" in violations[0][1]
    assert len(violations) <= 11
    listed = len(violations) - 1
    assert violations[-1] == (f"domains[{listed}]", f"... and {1000 - listed} more not listed")
    assert len((error.details() or "").encode()) <= 512


async def test_non_ascii_filter_names_are_bounded_in_total_before_any_is_parsed(
    env: Env,
) -> None:
    names = ["ü" * 60 + f"{i:02}.de" for i in range(20)]  # 20 x 65 characters
    error = await _watch_refused(env.stub, broker_pb2.WatchStatusRequest(domains=names))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, [(field, description)] = details(error)
    assert (reason, field) == ("FILTER_TOO_LARGE", "domains")
    assert description.startswith("non-ASCII names add up to 1300 characters; the limit is 1024")


async def test_a_leaf_with_1200_sans_is_refused_with_a_bounded_message(env: Env) -> None:
    sans = [f"host{i:04}.elsewhere-example.net" for i in range(1200)]
    leaf = PKI.leaf(*sans)
    error = await _refused(
        env.stub.UploadCustom(
            broker_pb2.UploadCustomRequest(
                domain=KNOWN, certificate=PKI.bundle(leaf), private_key=leaf.key_pem()
            ),
            timeout=DEADLINE,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, [(field, description)] = details(error)
    assert (reason, field) == ("CERT_NAME_MISMATCH", "certificate")
    assert f"it covers {', '.join(sans[:5])} and 1,195 more." in description
    assert sans[5] not in description
    assert len(description.encode()) <= 512


async def test_upload_fields_over_64_kib_are_refused_by_the_broker_or_by_grpc(env: Env) -> None:
    over = b"-----BEGIN CERTIFICATE-----\n" + b"A" * (100 * 1024)
    error = await _refused(
        env.stub.UploadCustom(
            broker_pb2.UploadCustomRequest(domain=KNOWN, certificate=over, private_key=over),
            timeout=DEADLINE,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, violations = details(error)
    assert reason == "INPUT_TOO_LARGE"
    assert violations[0][0] == "certificate"
    huge = b"A" * MAX_RECEIVE_MESSAGE_BYTES
    _transport_refused(
        await _refused(
            env.stub.UploadCustom(
                broker_pb2.UploadCustomRequest(domain=KNOWN, certificate=huge),
                timeout=DEADLINE,
            )
        )
    )


async def test_list_domains_refuses_long_app_and_page_token(env: Env) -> None:
    error = await _refused(env.stub.ListDomains(broker_pb2.ListDomainsRequest(app="a" * 10_000)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error) == (
        "APP_INVALID",
        [("app", f"is 10000 characters; the limit is {MAX_APP_LENGTH}")],
    )
    error = await _refused(
        env.stub.ListDomains(broker_pb2.ListDomainsRequest(page_token="A" * 100_000))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error) == (
        "PAGE_TOKEN_INVALID",
        [("page_token", "is 100000 characters; the limit is 512")],
    )
    error = await _refused(
        env.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=KNOWN, app="a" * 100_000)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error)[0] == "APP_INVALID"


async def test_list_domains_pages_end_at_the_byte_budget(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"p{i}.pages.example" for i in range(5)]
    for name in names:
        await env.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="pages", disable_letsencrypt=True)
        )
    one = await env.stub.ListDomains(broker_pb2.ListDomainsRequest(app="pages", page_size=1))
    monkeypatch.setattr(servicer, "MAX_PAGE_BYTES", int(one.domains[0].ByteSize() * 2.5))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await env.stub.ListDomains(
            broker_pb2.ListDomainsRequest(app="pages", page_size=100, page_token=token)
        )
        pages += 1
        assert 1 <= len(page.domains) <= 2
        seen.extend(d.domain for d in page.domains)
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(names)
    assert pages == 3
