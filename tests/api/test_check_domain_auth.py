"""CheckDomain needs MANAGE: it sends DNS and HTTP requests, so routers may not run it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import broker_settings, started_broker
from tests.rpc import details
from tests.tls import Identity, MtlsFiles


async def _call(port: int, mtls: MtlsFiles, who: Identity, domain: str) -> grpc.RpcError:
    creds = grpc.ssl_channel_credentials(
        root_certificates=mtls.ca.read_bytes(),
        private_key=who.key.read_bytes(),
        certificate_chain=who.cert.read_bytes(),
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckDomain(broker_pb2.CheckDomainRequest(domain=domain), timeout=10)
    return caught.value


async def test_router_is_refused_api_and_admin_get_through(tmp_path: Path) -> None:
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
    async with started_broker(settings) as broker:
        port = broker.running.port
        refused = await _call(port, mtls, router, "www.example.test")
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert details(refused)[0] == "ROLE_FORBIDDEN"
        for who in (api, admin):  # past authorization: the bad name is what stops them
            error = await _call(port, mtls, who, "not a name")
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert details(error)[1][0][0] == "domain"
