"""A real broker in-process with mTLS and one client identity per role, for role-aware tests.

``mtls_settings`` adds the TLS files and roles (``router-1`` → router, ``api-1``
→ api, ``admin-1`` → admin) to a test's settings; ``role_stubs`` starts the
broker and gives a stub per role (the router one receives keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from certbroker.clock import Clock
from certbroker.config import Settings
from certbroker.v1 import broker_pb2 as B
from certbroker.v1 import broker_pb2_grpc, domain_pb2
from certbroker_client.client import TlsFiles
from tests.broker import BrokerHandle, started_broker
from tests.tls import Identity, MtlsFiles

ROLES = {"router-1": "router", "api-1": "api", "admin-1": "admin"}


def mtls_channel(port: int, mtls: MtlsFiles, who: Identity) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=mtls.ca.read_bytes(),
        private_key=who.key.read_bytes(),
        certificate_chain=who.cert.read_bytes(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


def mtls_settings(settings: Settings, folder: Path) -> tuple[Settings, MtlsFiles]:
    """``settings`` with mTLS and ``ROLES``; the CA and identities are written in ``folder``."""
    mtls = MtlsFiles(folder)
    server = mtls.issue("broker", server=True)
    with_tls = replace(
        settings,
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(mtls.ca),
        roles=dict(ROLES),
    )
    return with_tls, mtls


@dataclass
class RoleStubs:
    broker: BrokerHandle
    mtls: MtlsFiles
    api: broker_pb2_grpc.CertificateBrokerServiceStub
    admin: broker_pb2_grpc.CertificateBrokerServiceStub

    @property
    def address(self) -> str:
        return self.broker.address

    def router_tls(self) -> TlsFiles:
        """The router identity's files, for ``RouterWatcher.connect`` (the role that gets keys)."""
        router = self.mtls.issue("router-1")
        return TlsFiles(ca=self.mtls.ca, cert=router.cert, key=router.key)

    async def revision(self) -> int:
        return await self.broker.running.store.current_revision()

    async def status(self, name: str) -> domain_pb2.Domain:
        return (await self.api.GetStatus(B.GetStatusRequest(domain=name))).domain


@contextlib.asynccontextmanager
async def role_stubs(
    settings: Settings, mtls: MtlsFiles, clock: Clock | None = None
) -> AsyncIterator[RoleStubs]:
    api, admin = mtls.issue("api-1"), mtls.issue("admin-1")
    async with started_broker(settings, clock) as broker:
        port = broker.running.port
        async with mtls_channel(port, mtls, api) as a, mtls_channel(port, mtls, admin) as b:
            yield RoleStubs(
                broker,
                mtls,
                broker_pb2_grpc.CertificateBrokerServiceStub(a),
                broker_pb2_grpc.CertificateBrokerServiceStub(b),
            )
