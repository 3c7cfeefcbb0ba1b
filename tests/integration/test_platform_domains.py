"""The platform's own ``*.region`` wildcard, end to end: BIND, Pebble, the broker and a router.

One ``named`` holds the platform's zone (``osc-fr1.example.test``, where the
broker's TSIG key may write TXT records and every other name answers
127.0.0.1, as a region's DNS wildcard does); Pebble validates through it. The
broker starts with ``platform_domains`` and no delegation zone: it must issue
the wildcard by writing ``_acme-challenge.osc-fr1.example.test`` itself, with
no API call and nothing asked of anyone. A reference router (the library
``certbroker router`` runs) follows the broker as the ``router`` role and must
serve every app of the region from that one certificate, validated to
Pebble's root, then its renewal. The broker's clock is fake (moved to the
renewal time), Pebble's is real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2 as B
from certbroker.v1 import domain_pb2
from certbroker_client.reference_router import ReferenceRouter, RouterConfig
from certbroker_client.router import RouterWatcher
from tests.broker import broker_settings
from tests.infra.bind import Bind, BindKey
from tests.infra.pebble import Pebble
from tests.integration.dns01 import AHEAD
from tests.integration.lab import in_use, verify_chain, wait_status
from tests.pki import TestPKI
from tests.roles import RoleStubs, mtls_settings, role_stubs
from tests.router.support import fingerprint, served, wait_until
from tests.rpc import reason

pytestmark = pytest.mark.integration

ZONE = "osc-fr1.example.test"
REGION = f"*.{ZONE}"
CHALLENGE = f"_acme-challenge.{ZONE}"
DEFAULT_PKI = TestPKI("Router default")


@pytest.fixture(scope="module")
def bind() -> Iterator[Bind]:
    """Overrides conftest's: the same server plus the platform's zone (pebble resolves here)."""
    with Bind.running(platform_zones=(ZONE,)) as server:
        yield server


@dataclass
class Platform:
    broker: RoleStubs
    clock: FakeClock
    watcher: RouterWatcher
    router: ReferenceRouter
    default_fingerprint: str


@contextlib.asynccontextmanager
async def platform(
    tmp: Path, bind: Bind, pebble: Pebble, clock: FakeClock, key: BindKey | None = None
) -> AsyncIterator[Platform]:
    key_file = Bind.write_key_file(tmp / "tsig.key", key or bind.broker_key)
    default = DEFAULT_PKI.leaf("default.router.test")
    default_cert, default_key = tmp / "default.pem", tmp / "default.key"
    default_cert.write_bytes(DEFAULT_PKI.bundle(default))
    default_key.write_bytes(default.key_pem())
    settings, mtls = mtls_settings(
        broker_settings(
            tmp,
            acme_directory=pebble.directory_url,
            acme_ca_bundle=pebble.ca_bundle_path,
            dns_servers=(("127.0.0.1", bind.port),),
            dns01_server=("127.0.0.1", bind.port),
            dns01_tsig_key=str(key_file),
            platform_domains=(REGION,),
            heartbeat_interval=timedelta(seconds=1),
        ),
        tmp / "tls",
    )
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(role_stubs(settings, mtls, clock))
        watcher = RouterWatcher.connect(
            broker.address, broker.router_tls(), idle_timeout=5.0, max_backoff=0.5
        )
        stack.push_async_callback(watcher.close)
        router = ReferenceRouter(
            watcher.certificates,
            RouterConfig(
                https_listen=("127.0.0.1", 0),
                http_listen=None,
                http01_forward=None,
                default_cert=default_cert,
                default_key=default_key,
            ),
        )
        await router.start()
        stack.push_async_callback(router.stop)
        watching = asyncio.create_task(watcher.run())

        async def cancel() -> None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

        stack.push_async_callback(cancel)
        yield Platform(broker, clock, watcher, router, fingerprint(default.cert))


async def serves(running: Platform, name: str, expected: str, root: bytes) -> None:
    """The router serves ``name`` with the certificate ``expected``, valid for it to ``root``."""

    async def check() -> bool:
        try:
            got = await served(running.router.https_port, name, trust_pem=root)
        except OSError:  # ssl.SSLError included: not (yet) the certificate that validates
            return False
        return fingerprint(got) == expected

    await wait_until(check, 20, f"the router to serve {name} with {expected[:12]}", 0.1)


async def test_the_platform_wildcard_is_issued_served_to_every_app_and_renewed(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    clock = FakeClock(datetime.now(UTC) + AHEAD)
    issued_before = pebble.issued_count()
    async with platform(tmp_path, bind, pebble, clock) as running:
        broker = running.broker
        # 1. No API call: the start alone issues it, by writing in the platform's zone.
        first = await wait_status(broker.api, REGION, in_use, timeout=30)
        assert first.platform and first.app == "_platform"
        assert first.action_required == ""
        assert first.retry.attempt == 0
        assert first.serving_source == domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT
        assert list(first.lets_encrypt_certificate.sans) == [REGION]
        root = pebble.root_pem()
        for app in ("app1", "app2"):
            verify_chain(first.lets_encrypt_certificate.chain_pem, root, f"{app}.{ZONE}")
        assert bind.query(CHALLENGE, "TXT") == []  # the challenge value is gone again
        assert pebble.issued_count() == issued_before + 1
        # 2. The router serves every app of the region from it, with no per-app entry.
        old = first.lets_encrypt_certificate.sha256_fingerprint
        for app in ("app1", "app2"):
            await serves(running, f"{app}.{ZONE}", old, root)
        assert running.watcher.certificates.names() == [REGION]
        # names no certificate covers get the router's default certificate, and only they
        for name in (f"a.b.{ZONE}", ZONE, "elsewhere.test"):
            got = await served(running.router.https_port, name)
            assert fingerprint(got) == running.default_fingerprint

        # 3. Renewal at two thirds of its life, with nobody asking; the router follows.
        clock.set(first.renewal_time.ToDatetime(UTC))
        renewed = await wait_status(
            broker.api,
            REGION,
            lambda d: d.lets_encrypt_certificate.serial != first.lets_encrypt_certificate.serial,
            timeout=30,
        )
        assert renewed.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE
        assert renewed.retry.attempt == 0
        new = renewed.lets_encrypt_certificate.sha256_fingerprint
        for app in ("app1", "app2"):
            await serves(running, f"{app}.{ZONE}", new, root)
        assert bind.query(CHALLENGE, "TXT") == []

        # 4. No app and no role can take it over, and no app can add a name under it.
        for stub, app in ((broker.api, "shop"), (broker.admin, "")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RemoveDomain(B.RemoveDomainRequest(domain=REGION, app=app))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason(caught.value) == "PLATFORM_DOMAIN"
        refusals = ((REGION, "PLATFORM_DOMAIN"), (f"custom.{ZONE}", "UNDER_PLATFORM_DOMAIN"))
        for name, why in refusals:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await broker.api.IssueCertificate(
                    B.IssueCertificateRequest(domain=name, app="shop")
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason(caught.value) == why
        assert (await broker.status(REGION)).lets_encrypt_certificate.sha256_fingerprint == new


def checks(response: B.CheckDomainResponse) -> dict[str, B.DomainCheck]:
    return {check.name: check for check in response.checks}


async def test_the_doctor_knows_the_platform_domain_and_the_names_under_it(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    clock = FakeClock(datetime.now(UTC) + AHEAD)
    async with platform(tmp_path, bind, pebble, clock) as running:
        broker = running.broker
        await wait_status(broker.api, REGION, in_use, timeout=30)
        revision = await broker.revision()
        own = await broker.api.CheckDomain(B.CheckDomainRequest(domain=REGION))
        clock.advance(timedelta(seconds=11))  # one run per domain every 10 s
        as_app = await broker.api.CheckDomain(B.CheckDomainRequest(domain=REGION, app="shop"))
        under = await broker.api.CheckDomain(
            B.CheckDomainRequest(domain=f"custom.{ZONE}", app="shop")
        )
        assert await broker.revision() == revision  # read-only, as ever
    found = checks(own)
    assert found["ownership"].verdict == B.CHECK_VERDICT_OK
    assert "the platform's own domain" in found["ownership"].summary
    assert found["configuration"].verdict == B.CHECK_VERDICT_OK
    assert "DNS-01 in the platform's zone" in found["configuration"].summary
    access = found["dns01_delegation"]
    assert access.verdict == B.CHECK_VERDICT_OK, access
    assert access.summary.startswith(f"no delegation needed: the broker writes {CHALLENGE}")
    assert checks(as_app)["ownership"].verdict == B.CHECK_VERDICT_FAIL
    refused = checks(under)["ownership"]
    assert refused.verdict == B.CHECK_VERDICT_FAIL
    assert "under the platform's own domain" in refused.summary


async def test_a_zone_that_refuses_the_update_backs_off_like_any_failure(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    """The same backoff as every domain, the reason said, and the CA never asked."""
    wrong = BindKey(bind.broker_key.name, "hmac-sha256", BindKey.generate("x").secret)
    clock = FakeClock(datetime.now(UTC) + AHEAD)
    issued_before = pebble.issued_count()
    async with platform(tmp_path, bind, pebble, clock, wrong) as running:
        status = await wait_status(
            running.broker.api, REGION, lambda d: d.retry.last_error_reason != ""
        )
    assert status.retry.last_error_reason == "DNS01_UPDATE_REFUSED"
    assert "BADSIG" in status.retry.last_error_message
    assert status.retry.attempt == 1
    retry = status.retry
    gap = retry.next_attempt_time.ToDatetime(UTC) - retry.last_error_time.ToDatetime(UTC)
    assert gap == timedelta(minutes=1)
    assert status.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_CREATING
    assert status.action_required == ""  # nothing for a customer to do: the platform's zone
    assert pebble.issued_count() == issued_before
