"""The real server on a loopback port, every RPC through the generated stubs."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import broker_settings, started_broker
from tests.rpc import details


async def test_health_serving_and_reflection_lists_service(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        health = health_pb2_grpc.HealthStub(broker.channel)
        for service in ("", "certbroker.v1.CertificateBrokerService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(broker.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names = []
        async for response in stub.ServerReflectionInfo(iter([request])):
            names = [s.name for s in response.list_services_response.service]
        assert "certbroker.v1.CertificateBrokerService" in names


async def test_every_rpc_through_generated_stubs(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        stub = broker.stub
        added = await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="WWW.Example.COM.", app="shop", disable_letsencrypt=True
            )
        )
        domain = added.domain
        assert domain.domain == "www.example.com"
        assert domain.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_DISABLED
        assert domain.serving_source == domain_pb2.CERTIFICATE_SOURCE_NONE
        assert domain.revision > 0

        again = await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="www.example.com", app="shop", disable_letsencrypt=True
            )
        )
        assert again.domain.revision == domain.revision  # idempotent: no new write

        status = await stub.GetStatus(broker_pb2.GetStatusRequest(domain="www.example.com"))
        assert status.domain == again.domain

        await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="api.example.com", app="shop", disable_letsencrypt=True
            )
        )
        await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="blog.other.test", app="blog", disable_letsencrypt=True
            )
        )
        listed = await stub.ListDomains(broker_pb2.ListDomainsRequest(app="shop", page_size=1))
        assert [d.domain for d in listed.domains] == ["api.example.com"]
        second = await stub.ListDomains(
            broker_pb2.ListDomainsRequest(
                app="shop", page_size=1, page_token=listed.next_page_token
            )
        )
        assert [d.domain for d in second.domains] == ["www.example.com"]
        assert second.next_page_token == ""
        everything = await stub.ListDomains(broker_pb2.ListDomainsRequest())
        assert len(everything.domains) == 3

        deleted = await stub.DeleteCustom(broker_pb2.DeleteCustomRequest(domain="www.example.com"))
        assert deleted.domain.serving_source == domain_pb2.CERTIFICATE_SOURCE_NONE

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UploadCustom(
                broker_pb2.UploadCustomRequest(
                    domain="www.example.com", certificate=b"not a certificate", private_key=b"x"
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        removed = await stub.RemoveDomain(broker_pb2.RemoveDomainRequest(domain="www.example.com"))
        assert removed.revision > domain.revision
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetStatus(broker_pb2.GetStatusRequest(domain="www.example.com"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert details(caught.value)[0] == "DOMAIN_NOT_FOUND"

        stream = stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=0))
        kinds = []
        async for response in stream:
            kinds.append(response.event.type)
            if response.event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                break
        stream.cancel()
        assert kinds.count(broker_pb2.EVENT_TYPE_SNAPSHOT) == 2


BAD_DOMAINS = [
    ("", "empty"),
    ("a" * 60 + "." + "b" * 60 + "." + "c" * 60 + "." + "d" * 60 + ".example.com", "over 253"),
    ("x" * 64 + ".example.com", "over 63"),
    ("a..example.com", "empty label"),
    ("bad_name.example.com", "outside letters"),
    ("-lead.example.com", "hyphen"),
    ("trail-.example.com", "hyphen"),
    ("192.0.2.1", "IP address"),
    ("2001:db8::1", "IP address"),
    ("www.*.example.com", "wildcard"),
    ("w*.example.com", "wildcard"),
    ("co.uk", "public suffix"),
    ("com", "public suffix"),
]


@pytest.mark.parametrize(("raw", "why"), BAD_DOMAINS)
async def test_bad_domains_refused_with_field_violation_and_nothing_stored(
    tmp_path: Path, raw: str, why: str
) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=raw, app="shop")
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, violations = details(caught.value)
        assert violations and all(field == "domain" for field, _ in violations)
        assert any(why in description for _, description in violations), violations
        listed = await broker.stub.ListDomains(broker_pb2.ListDomainsRequest())
        assert list(listed.domains) == []
        assert await broker.running.store.current_revision() == 0


async def test_idn_is_stored_as_punycode(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        reply = await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="Bücher.Example", app="shop", disable_letsencrypt=True
            )
        )
        assert reply.domain.domain == "xn--bcher-kva.example"


async def test_domain_of_another_app_is_a_failed_precondition(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="www.example.com", app="shop", disable_letsencrypt=True
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain="www.example.com", app="other")
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert details(caught.value)[0] == "DOMAIN_OWNED_BY_OTHER_APP"
        assert "shop" not in (caught.value.details() or "")  # never names the other app


async def test_missing_app_is_a_field_violation(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain="www.example.com")
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(caught.value)[1][0][0] == "app"


async def test_domains_and_revision_survive_a_restart(tmp_path: Path) -> None:
    settings = broker_settings(tmp_path)
    async with started_broker(settings) as broker:
        for name in ("a.example.com", "b.example.com"):
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(
                    domain=name, app="shop", disable_letsencrypt=True
                )
            )
        before = await broker.running.store.current_revision()
    async with started_broker(settings) as broker:
        listed = await broker.stub.ListDomains(broker_pb2.ListDomainsRequest())
        assert [d.domain for d in listed.domains] == ["a.example.com", "b.example.com"]
        assert all(
            d.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_DISABLED for d in listed.domains
        )
        assert await broker.running.store.current_revision() == before
        reply = await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="c.example.com", app="shop", disable_letsencrypt=True
            )
        )
        assert reply.domain.revision == before + 1


async def test_bad_page_token_is_invalid_argument(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.ListDomains(broker_pb2.ListDomainsRequest(page_token="%%%"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
