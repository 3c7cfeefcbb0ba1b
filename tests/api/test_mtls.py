"""Keys go to routers only: mTLS identities, roles, plaintext refusal, keys sealed at rest."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certbroker.clock import FakeClock
from certbroker.server import StartupError, run
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import broker_settings, started_broker
from tests.pki import NOW, TestPKI
from tests.tls import Identity, MtlsFiles

DOMAIN = "www.shop.example"


@pytest.fixture
def pki() -> TestPKI:
    return TestPKI("Mtls")


@pytest.fixture
def mtls(tmp_path: Path) -> MtlsFiles:
    return MtlsFiles(tmp_path / "tls")


def _credentials(mtls: MtlsFiles, who: Identity | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=mtls.ca.read_bytes(),
        private_key=who.key.read_bytes() if who else None,
        certificate_chain=who.cert.read_bytes() if who else None,
    )


@asynccontextmanager
async def _stub(
    port: int, mtls: MtlsFiles, who: Identity | None
) -> AsyncIterator[broker_pb2_grpc.CertificateBrokerServiceStub]:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", _credentials(mtls, who)) as channel:
        yield broker_pb2_grpc.CertificateBrokerServiceStub(channel)


async def _first_event(stub: broker_pb2_grpc.CertificateBrokerServiceStub) -> broker_pb2.WatchEvent:
    stream = stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=0, include_keys=True))
    async for response in stream:
        stream.cancel()
        return response.event
    raise AssertionError("no event")


async def test_router_gets_keys_api_does_not_and_strangers_are_refused(
    tmp_path: Path, pki: TestPKI, mtls: MtlsFiles
) -> None:
    server_id = mtls.issue("broker", server=True)
    router, api, stranger = mtls.issue("router-1"), mtls.issue("api-1"), mtls.issue("nobody")
    trust = tmp_path / "trust.pem"
    trust.write_bytes(pki.root.pem)
    settings = broker_settings(
        tmp_path,
        trust_bundle=str(trust),
        tls_cert=str(server_id.cert),
        tls_key=str(server_id.key),
        tls_client_ca=str(mtls.ca),
        roles={"router-1": "router", "api-1": "api"},
    )
    leaf = pki.leaf(DOMAIN)
    async with started_broker(settings, FakeClock(NOW)) as broker:
        port = broker.running.port
        async with _stub(port, mtls, api) as api_stub:
            await api_stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(
                    domain=DOMAIN, app="shop", disable_letsencrypt=True
                )
            )
            await api_stub.UploadCustom(
                broker_pb2.UploadCustomRequest(
                    domain=DOMAIN,
                    app="shop",
                    certificate=pki.bundle(leaf),
                    private_key=leaf.key_pem(),
                )
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _first_event(api_stub)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # without keys the api role may watch
            stream = api_stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=0))
            async for response in stream:
                assert not response.event.HasField("serving")
                assert "PRIVATE KEY" not in str(response)
                stream.cancel()
                break

        async with _stub(port, mtls, router) as router_stub:
            event = await _first_event(router_stub)
            serving = event.serving
            assert serving.chain_pem.startswith("-----BEGIN CERTIFICATE-----")
            key = serialization.load_pem_private_key(serving.private_key_pem.encode(), None)
            cert = x509.load_pem_x509_certificate(serving.chain_pem.encode())
            assert key.public_key() == cert.public_key()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await router_stub.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=DOMAIN))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

        async with _stub(port, mtls, stranger) as stranger_stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stranger_stub.GetStatus(broker_pb2.GetStatusRequest(domain=DOMAIN))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

        async with _stub(port, mtls, None) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await anonymous.GetStatus(broker_pb2.GetStatusRequest(domain=DOMAIN), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # handshake refused

        other_ca = MtlsFiles(tmp_path / "other", "some other CA")
        impostor = other_ca.issue("router-1")
        creds = grpc.ssl_channel_credentials(
            root_certificates=mtls.ca.read_bytes(),
            private_key=impostor.key.read_bytes(),
            certificate_chain=impostor.cert.read_bytes(),
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await broker_pb2_grpc.CertificateBrokerServiceStub(channel).GetStatus(
                    broker_pb2.GetStatusRequest(domain=DOMAIN), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_refuses_include_keys(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        stream = broker.stub.WatchStatus(broker_pb2.WatchStatusRequest(include_keys=True))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream:
                pass
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "mTLS" in (caught.value.details() or "")


async def test_no_private_key_in_the_database_or_logs(
    tmp_path: Path, pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    trust = tmp_path / "trust.pem"
    trust.write_bytes(pki.root.pem)
    settings = broker_settings(tmp_path, trust_bundle=str(trust))
    leaf = pki.leaf(DOMAIN)
    key_pem = leaf.key_pem()
    async with started_broker(settings, FakeClock(NOW)) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=DOMAIN, app="a")
        )
        await broker.stub.UploadCustom(
            broker_pb2.UploadCustomRequest(
                domain=DOMAIN, certificate=pki.bundle(leaf), private_key=key_pem
            )
        )
        # a refused upload with a valid key must not echo it either
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.UploadCustom(
                broker_pb2.UploadCustomRequest(
                    domain=DOMAIN, certificate=b"junk", private_key=key_pem
                )
            )
        assert "PRIVATE KEY" not in (caught.value.details() or "")
        await asyncio.sleep(0)
    body = b"".join(key_pem.split(b"\n")[1:3])  # a piece of the key's base64
    for path in tmp_path.glob("broker.sqlite3*"):
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data, path
        assert body not in data, path
    assert "PRIVATE KEY" not in caplog.text


async def test_wrong_or_missing_kek_stops_the_start(tmp_path: Path) -> None:
    settings = broker_settings(tmp_path)
    async with started_broker(settings):
        pass
    (tmp_path / "kek").rename(tmp_path / "kek.orig")
    with pytest.raises(StartupError, match="CERTBROKER_KEK_FILE"):
        await run(settings)
    from certbroker.x509.sealing import KeySealer

    KeySealer.generate_file(str(tmp_path / "kek"))
    with pytest.raises(StartupError, match="not the key-encryption key"):
        await run(settings)


async def test_a_key_that_does_not_open_fails_neither_the_snapshot_nor_the_other_domains(
    tmp_path: Path, pki: TestPKI, mtls: MtlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """One damaged sealed key used to end every router's stream at that domain, forever."""
    server_id, router = mtls.issue("broker", server=True), mtls.issue("router-1")
    trust = tmp_path / "trust.pem"
    trust.write_bytes(pki.root.pem)
    settings = broker_settings(
        tmp_path,
        trust_bundle=str(trust),
        tls_cert=str(server_id.cert),
        tls_key=str(server_id.key),
        tls_client_ca=str(mtls.ca),
        roles={"router-1": "router"},
    )
    names = ["a.shop.example", "b.shop.example"]
    async with started_broker(replace(settings, tls_cert=None), FakeClock(NOW)) as broker:
        for name in names:  # set up over plaintext on loopback (every caller may manage)
            leaf = pki.leaf(name)
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(
                    domain=name, app="shop", disable_letsencrypt=True
                )
            )
            await broker.stub.UploadCustom(
                broker_pb2.UploadCustomRequest(
                    domain=name,
                    app="shop",
                    certificate=pki.bundle(leaf),
                    private_key=leaf.key_pem(),
                )
            )
    conn = sqlite3.connect(tmp_path / "broker.sqlite3")
    with conn:  # damage a.shop.example's sealed key (a bad restore, a hand edit)
        conn.execute(
            "UPDATE certificates SET key_sealed = zeroblob(64) WHERE domain = ?", (names[0],)
        )
    conn.close()

    caplog.set_level(logging.INFO)
    async with (
        started_broker(settings, FakeClock(NOW)) as broker,
        _stub(broker.running.port, mtls, router) as stub,
    ):
        for batched in (False, True, False):  # reconnecting: the same, and no new log line
            stream = stub.WatchStatus(
                broker_pb2.WatchStatusRequest(
                    after_revision=0, include_keys=True, batch_snapshot=batched
                )
            )
            served: dict[str, bool] = {}
            async for response in stream:
                events = list(response.snapshot_batch.events) or [response.event]
                if events[-1].type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                    stream.cancel()
                    break
                served.update((e.domain.domain, e.HasField("serving")) for e in events)
            assert served == {names[0]: False, names[1]: True}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and names[0] in errors[0].getMessage()
    assert not errors[0].exc_info
