"""Ownership on every mutation, through a real mTLS broker: api and admin roles, one family.

One broker serves the module (mTLS, roles ``api-1`` → api and ``admin-1`` → admin,
trusting the test PKI for uploads, no ACME directory). Domains opt out of Let's
Encrypt, so the scheduler writes nothing of its own and the global revision tells
whether a refused call wrote anything at all.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.infra.postgres import Postgres, create_database, drop_database
from tests.pki import NOW, TestPKI
from tests.rpc import details
from tests.tls import Identity, MtlsFiles

PKI = TestPKI("Owner")
OWNED = "DOMAIN_OWNED_BY_OTHER_APP"


@dataclass
class Tenants:
    broker: BrokerHandle
    api: broker_pb2_grpc.CertificateBrokerServiceStub
    admin: broker_pb2_grpc.CertificateBrokerServiceStub

    async def revision(self) -> int:
        return await self.broker.running.store.current_revision()

    async def add(
        self, name: str, app: str, *, include_apex: bool = False
    ) -> broker_pb2.IssueCertificateResponse:
        return await self.api.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain=name, app=app, disable_letsencrypt=True, include_apex=include_apex
            )
        )

    async def status(self, name: str) -> domain_pb2.Domain:
        return (await self.api.GetStatus(broker_pb2.GetStatusRequest(domain=name))).domain


def _channel(port: int, mtls: MtlsFiles, who: Identity) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=mtls.ca.read_bytes(),
        private_key=who.key.read_bytes(),
        certificate_chain=who.cert.read_bytes(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


@asynccontextmanager
async def _tenants(tmp: Path, db: str) -> AsyncIterator[Tenants]:
    mtls = MtlsFiles(tmp / "tls")
    server, api, admin = (
        mtls.issue("broker", server=True),
        mtls.issue("api-1"),
        mtls.issue("admin-1"),
    )
    trust = tmp / "trust.pem"
    trust.write_bytes(PKI.root.pem)
    settings = broker_settings(
        tmp,
        db=db,
        trust_bundle=str(trust),
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(mtls.ca),
        roles={"api-1": "api", "admin-1": "admin"},
    )
    async with started_broker(settings, FakeClock(NOW)) as broker:
        port = broker.running.port
        async with _channel(port, mtls, api) as a, _channel(port, mtls, admin) as b:
            yield Tenants(
                broker,
                broker_pb2_grpc.CertificateBrokerServiceStub(a),
                broker_pb2_grpc.CertificateBrokerServiceStub(b),
            )


@pytest.fixture(scope="module")
async def tenants(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Tenants]:
    tmp = tmp_path_factory.mktemp("ownership")
    async with _tenants(tmp, str(tmp / "broker.sqlite3")) as found:
        yield found


@pytest.fixture(scope="module")
async def pg_tenants(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: Postgres
) -> AsyncIterator[Tenants]:
    """The same broker on PostgreSQL: its family lookups are the other store's SQL."""
    dsn = await create_database(postgres_server, "ownership")
    try:
        async with _tenants(tmp_path_factory.mktemp("ownership-pg"), dsn) as found:
            yield found
    finally:
        await drop_database(postgres_server, dsn)


@pytest.fixture(params=["tenants", "pg_tenants"])
def either_tenants(request: pytest.FixtureRequest) -> Tenants:
    """The SQLite broker, then the PostgreSQL one (for the family rule's lookups)."""
    found: Tenants = request.getfixturevalue(request.param)
    return found


def base() -> str:
    return f"t{uuid.uuid4().hex[:10]}.example.com"


async def refused(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def owned_by_other(call: Awaitable[Any], other_app: str) -> None:
    error = await refused(call, grpc.StatusCode.FAILED_PRECONDITION)
    assert details(error)[0] == OWNED
    assert other_app not in (error.details() or "")


async def test_a_tenant_scoped_read_of_another_apps_domain_shows_nothing(
    tenants: Tenants,
) -> None:
    """GetStatus with ``app``: the broker, not only the platform API, keeps tenants apart."""
    name = f"www.{base()}"
    await tenants.add(name, "alice")
    mine = await tenants.api.GetStatus(broker_pb2.GetStatusRequest(domain=name, app="alice"))
    assert mine.domain.app == "alice"
    await owned_by_other(
        tenants.api.GetStatus(broker_pb2.GetStatusRequest(domain=name, app="mallory")), "alice"
    )
    # a missing name is NOT_FOUND whoever asks; a bad app is refused before any lookup
    await refused(
        tenants.api.GetStatus(broker_pb2.GetStatusRequest(domain=f"x.{base()}", app="mallory")),
        grpc.StatusCode.NOT_FOUND,
    )
    bad = await refused(
        tenants.api.GetStatus(broker_pb2.GetStatusRequest(domain=name, app="Not An App")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "Not An App" not in (bad.details() or "")
    # without app (operators, older callers) the status is shown as before
    assert (await tenants.status(name)).app == "alice"


async def test_every_mutation_of_another_apps_domain_is_refused_and_writes_nothing(
    tenants: Tenants,
) -> None:
    name = f"www.{base()}"
    leaf = PKI.leaf(name)
    api = tenants.api
    await tenants.add(name, "alice")
    bundle, key = PKI.bundle(leaf), leaf.key_pem()
    await api.UploadCustom(
        broker_pb2.UploadCustomRequest(
            domain=name, app="alice", certificate=bundle, private_key=key
        )
    )
    before = await tenants.status(name)
    revision = await tenants.revision()

    other = PKI.leaf(name)
    await owned_by_other(
        api.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=name, app="mallory")), "alice"
    )
    for certificate, private_key in ((bundle, key), (PKI.bundle(other), other.key_pem())):
        await owned_by_other(
            api.UploadCustom(
                broker_pb2.UploadCustomRequest(
                    domain=name, app="mallory", certificate=certificate, private_key=private_key
                )
            ),
            "alice",
        )
    await owned_by_other(
        api.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name, app="mallory")), "alice"
    )
    await owned_by_other(
        api.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="mallory")),
        "alice",
    )
    assert await tenants.revision() == revision
    assert await tenants.status(name) == before

    # the owner may do all of it
    deleted = await api.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name, app="alice"))
    assert deleted.domain.serving_source == domain_pb2.CERTIFICATE_SOURCE_NONE
    removed = await api.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=name, app="alice"))
    assert removed.revision == revision + 2


async def test_a_wildcard_its_apex_and_the_names_under_it_have_one_owner(
    either_tenants: Tenants,
) -> None:
    tenants = either_tenants
    w, v, t = base(), base(), base()
    await tenants.add(w, "alice")
    await tenants.add(f"*.{v}", "alice", include_apex=True)
    await tenants.add(f"*.{t}", "mallory")
    await tenants.add(f"*.p.{t}", "alice")  # no apex: outside mallory's *.t
    revision = await tenants.revision()

    # alice owns w: its wildcard shares _acme-challenge.w, with or without the apex
    for apex in (False, True):
        await owned_by_other(tenants.add(f"*.{w}", "mallory", include_apex=apex), "alice")
    # alice owns *.v with its apex: neither the apex nor a name the wildcard covers
    await owned_by_other(tenants.add(v, "mallory"), "alice")
    await owned_by_other(tenants.add(f"a.{v}", "mallory"), "alice")
    # turning the apex on claims p.t, which mallory's *.t covers
    await owned_by_other(tenants.add(f"*.p.{t}", "alice", include_apex=True), "mallory")
    assert not (await tenants.status(f"*.p.{t}")).include_apex
    assert await tenants.revision() == revision

    # outside the family, and within one app, all is fine
    await tenants.add(f"b.a.{v}", "mallory")  # two labels under *.v
    await tenants.add(f"*.{w}", "alice", include_apex=True)
    await tenants.add(f"x.{w}", "alice")


@pytest.mark.parametrize("app", ["Shop", "my_app", "-shop", "x" * 64, "shop.example", " shop"])
async def test_app_names_are_validated(tenants: Tenants, app: str) -> None:
    name = f"www.{base()}"
    revision = await tenants.revision()
    for call in (
        tenants.api.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app=app)),
        tenants.api.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=name, app=app)),
        tenants.admin.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name, app=app)),
    ):
        error = await refused(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert details(error) == ("APP_INVALID", [("app", details(error)[1][0][1])])
        assert "lowercase letters, digits and hyphens" in details(error)[1][0][1]
    assert await tenants.revision() == revision


async def test_an_empty_app_is_for_the_admin_role_only(tenants: Tenants) -> None:
    name = f"www.{base()}"
    leaf = PKI.leaf(name)
    upload = broker_pb2.UploadCustomRequest(
        domain=name, certificate=PKI.bundle(leaf), private_key=leaf.key_pem()
    )
    await tenants.add(name, "alice")
    revision = await tenants.revision()
    for call in (
        tenants.api.UploadCustom(upload),
        tenants.api.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name)),
        tenants.api.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=name)),
    ):
        error = await refused(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert details(error)[1][0][0] == "app"
    # IssueCertificate always needs the owner, whoever calls
    error = await refused(
        tenants.admin.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=f"x.{name}")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(error)[1][0][0] == "app"
    assert await tenants.revision() == revision

    # the operator acts across tenants
    uploaded = await tenants.admin.UploadCustom(upload)
    assert uploaded.domain.serving_source == domain_pb2.CERTIFICATE_SOURCE_CUSTOM
    await tenants.admin.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name))
    await tenants.admin.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=name))
    # and, naming an app, is held to it like anyone
    await tenants.add(name, "alice")
    await owned_by_other(
        tenants.admin.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=name, app="bob")),
        "alice",
    )


async def test_plaintext_loopback_development_mode_may_leave_the_app_empty(
    tmp_path: Path,
) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        name = "www.dev.example"
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="dev", disable_letsencrypt=True)
        )
        await broker.stub.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name))
        await broker.stub.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=name))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
