"""The platform's own domains through a real mTLS broker: owned by no app, changed by no role.

Each broker here is started with ``platform_domains`` and no ACME directory, so
the platform domains rest in ``NOT_CONFIGURED`` after the scheduler's first
look and the store's revision tells whether a refused call wrote anything.
Issuance over DNS-01 is in tests/integration/test_platform_domains.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from certbroker.clock import FakeClock
from certbroker.config import Settings
from certbroker.server import run
from certbroker.startup import StartupError
from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import broker_settings
from tests.integration.lab import wait_status
from tests.pki import NOW, TestPKI
from tests.roles import RoleStubs, mtls_settings, role_stubs
from tests.rpc import details
from tests.tls import MtlsFiles

PKI = TestPKI("Platform")
REGION = "*.osc-fr1.example.test"
ON_THE_PSL = "*.eu.platform.sh"  # eu.platform.sh is a public suffix
B = broker_pb2


def settings_for(tmp: Path, domains: tuple[str, ...]) -> tuple[Settings, MtlsFiles]:
    trust = tmp / "trust.pem"
    trust.write_bytes(PKI.root.pem)
    return mtls_settings(
        broker_settings(tmp, trust_bundle=str(trust), platform_domains=domains), tmp / "tls"
    )


@contextlib.asynccontextmanager
async def roles(settings: Settings, mtls: MtlsFiles) -> AsyncIterator[RoleStubs]:
    async with role_stubs(settings, mtls, FakeClock(NOW)) as running:
        yield running


def settled(d: domain_pb2.Domain) -> bool:
    """The scheduler has had its look (no CA here: NOT_CONFIGURED, held for a day)."""
    return d.retry.last_error_reason == "NOT_CONFIGURED"


@pytest.fixture(scope="module")
async def platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RoleStubs]:
    settings, mtls = settings_for(tmp_path_factory.mktemp("platform"), (REGION, ON_THE_PSL))
    async with roles(settings, mtls) as running:
        for name in (REGION, ON_THE_PSL):
            await wait_status(running.api, name, settled)
        yield running


async def refused(call: Awaitable[Any], code: grpc.StatusCode) -> tuple[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return details(caught.value)[0], caught.value.details() or ""


async def test_at_start_each_platform_domain_exists_owned_by_the_platform(
    platform: RoleStubs,
) -> None:
    status = await platform.status(REGION)
    assert status.app == "_platform"
    assert status.platform
    assert status.challenge_type == domain_pb2.CHALLENGE_TYPE_DNS_01
    assert not status.disable_letsencrypt
    # listed with its owner, alone under the platform's name, and in the whole list
    mine = await platform.api.ListDomains(B.ListDomainsRequest(app="_platform"))
    assert sorted(d.domain for d in mine.domains) == sorted([REGION, ON_THE_PSL])
    assert all(d.platform for d in mine.domains)
    everyone = await platform.admin.ListDomains(B.ListDomainsRequest())
    assert {REGION, ON_THE_PSL} <= {d.domain for d in everyone.domains}
    # a public suffix, yet the platform's own: found, and a watch may follow it by name
    assert (await platform.status(ON_THE_PSL)).platform
    stream = platform.api.WatchStatus(B.WatchStatusRequest(domains=[ON_THE_PSL]))
    first = await stream.read()
    stream.cancel()
    assert first.event.domain.domain == ON_THE_PSL
    assert first.event.domain.app == "_platform"
    # other public suffixes are still refused
    reason, _ = await refused(
        platform.api.GetStatus(B.GetStatusRequest(domain="*.us.platform.sh")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert reason == "DOMAIN_PUBLIC_SUFFIX"


@pytest.mark.parametrize("name", [REGION, ON_THE_PSL])
async def test_no_app_and_no_role_changes_a_platform_domain(platform: RoleStubs, name: str) -> None:
    leaf = PKI.leaf(name)
    bundle, key = PKI.bundle(leaf), leaf.key_pem()
    before = await platform.status(name)
    revision = await platform.revision()
    for stub, app in ((platform.api, "shop"), (platform.admin, "shop"), (platform.admin, "")):
        calls: list[Awaitable[Any]] = [
            stub.UploadCustom(
                B.UploadCustomRequest(domain=name, app=app, certificate=bundle, private_key=key)
            ),
            stub.DeleteCustom(B.DeleteCustomRequest(domain=name, app=app)),
            stub.RemoveDomain(B.RemoveDomainRequest(domain=name, app=app)),
        ]
        if app:  # IssueCertificate always names the app that would own the domain
            calls.append(stub.IssueCertificate(B.IssueCertificateRequest(domain=name, app=app)))
            calls.append(
                stub.IssueCertificate(
                    B.IssueCertificateRequest(domain=name, app=app, disable_letsencrypt=True)
                )
            )
            calls.append(  # a forced renewal too: the broker renews it on schedule
                stub.IssueCertificate(B.IssueCertificateRequest(domain=name, app=app, renew=True))
            )
        for call in calls:
            reason, message = await refused(call, grpc.StatusCode.FAILED_PRECONDITION)
            assert reason == "PLATFORM_DOMAIN"
            assert "CERTBROKER_PLATFORM_DOMAINS" in message
    # nobody can act as the platform: its owner name is not an app name
    reason, _ = await refused(
        platform.api.IssueCertificate(B.IssueCertificateRequest(domain=name, app="_platform")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert reason == "APP_INVALID"
    assert await platform.revision() == revision  # nothing was written
    after = await platform.status(name)
    assert after.custom_certificate.sha256_fingerprint == ""
    assert after.revision == before.revision


@pytest.mark.parametrize(
    "name",
    [
        "my-app.osc-fr1.example.test",
        "a.b.osc-fr1.example.test",
        "osc-fr1.example.test",
        "*.x.osc-fr1.example.test",
        "x.eu.platform.sh",
    ],
)
async def test_an_apps_domain_under_a_platform_domain_is_refused(
    platform: RoleStubs, name: str
) -> None:
    revision = await platform.revision()
    reason, message = await refused(
        platform.api.IssueCertificate(B.IssueCertificateRequest(domain=name, app="shop")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason == "UNDER_PLATFORM_DOMAIN"
    assert "under the platform's own domain" in message
    assert await platform.revision() == revision


async def test_names_beside_a_platform_domain_stay_free(platform: RoleStubs) -> None:
    for name in ("www.example.test", "x.osc-fr2.example.test"):
        added = await platform.api.IssueCertificate(
            B.IssueCertificateRequest(domain=name, app="shop", disable_letsencrypt=True)
        )
        assert added.domain.app == "shop"
        assert not added.domain.platform


async def test_restarts_keep_retire_and_resume_platform_domains(tmp_path: Path) -> None:
    settings, mtls = settings_for(tmp_path, (REGION,))
    async with roles(settings, mtls) as first:
        created = await wait_status(first.api, REGION, settled)
    # 1. The same configuration again: nothing is written.
    async with roles(settings, mtls) as second:
        again = await second.status(REGION)
        assert again.revision == created.revision
        assert again.create_time == created.create_time
    # 2. Dropped from the configuration: retired, not removed; still no app's.
    async with roles(replace(settings, platform_domains=()), mtls) as third:
        retired = await third.status(REGION)
        assert retired.app == "_platform" and retired.platform
        assert retired.disable_letsencrypt
        assert retired.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_DISABLED
        assert retired.retry.last_error_reason == "PLATFORM_DOMAIN_RETIRED"
        assert "CERTBROKER_PLATFORM_DOMAINS" in retired.retry.last_error_message
        for stub in (third.api, third.admin):  # acting for an app: refused, admin or not
            reason, message = await refused(
                stub.RemoveDomain(B.RemoveDomainRequest(domain=REGION, app="shop")),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            assert reason == "PLATFORM_DOMAIN" and "retired" in message
        # the family rule still keeps it: no app takes the names it covers
        reason, _ = await refused(
            third.api.IssueCertificate(
                B.IssueCertificateRequest(domain="x.osc-fr1.example.test", app="shop")
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert reason == "DOMAIN_OWNED_BY_OTHER_APP"
    # 3. Configured again: renewed like before.
    async with roles(settings, mtls) as fourth:
        resumed = await fourth.status(REGION)
        assert not resumed.disable_letsencrypt
        assert resumed.retry.last_error_reason != "PLATFORM_DOMAIN_RETIRED"
        assert resumed.create_time == created.create_time
    # 4. Dropped again, then the admin role cleans it up.
    async with roles(replace(settings, platform_domains=()), mtls) as fifth:
        await fifth.admin.RemoveDomain(B.RemoveDomainRequest(domain=REGION))
        reason, _ = await refused(
            fifth.api.GetStatus(B.GetStatusRequest(domain=REGION)), grpc.StatusCode.NOT_FOUND
        )
        assert reason == "DOMAIN_NOT_FOUND"


async def test_an_apps_domain_named_in_the_configuration_stops_the_start(
    tmp_path: Path,
) -> None:
    settings, mtls = settings_for(tmp_path, ())
    async with roles(settings, mtls) as before:
        await before.api.IssueCertificate(
            B.IssueCertificateRequest(domain=REGION, app="shop", disable_letsencrypt=True)
        )
    with pytest.raises(StartupError, match=r"already a domain of app 'shop'.*domains-remove"):
        await run(replace(settings, platform_domains=(REGION,)), FakeClock(NOW))
    # nothing was changed: the app still owns it
    async with roles(settings, mtls) as after:
        assert (await after.status(REGION)).app == "shop"


async def test_app_domains_under_it_from_before_keep_their_owner(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    legacy = "legacy.osc-fr1.example.test"
    settings, mtls = settings_for(tmp_path, ())
    async with roles(settings, mtls) as before:
        await before.api.IssueCertificate(
            B.IssueCertificateRequest(domain=legacy, app="shop", disable_letsencrypt=True)
        )
    with caplog.at_level("WARNING", logger="certbroker.platform"):
        async with roles(replace(settings, platform_domains=(REGION,)), mtls) as after:
            assert (await after.status(legacy)).app == "shop"
            assert (await after.status(REGION)).platform
            # its owner still manages it (a settings change, then removal); no one else does
            await after.api.IssueCertificate(
                B.IssueCertificateRequest(domain=legacy, app="shop", disable_letsencrypt=False)
            )
            reason, _ = await refused(
                after.api.RemoveDomain(B.RemoveDomainRequest(domain=legacy, app="other")),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            assert reason == "DOMAIN_OWNED_BY_OTHER_APP"
            await after.api.RemoveDomain(B.RemoveDomainRequest(domain=legacy, app="shop"))
    # The broker's own lines (certbroker.journal logs every change of the domain) aside.
    warned = [
        r.getMessage()
        for r in caplog.records
        if legacy in r.getMessage() and r.name != "certbroker.journal"
    ]
    assert len(warned) == 1 and "keep their owners" in warned[0]
