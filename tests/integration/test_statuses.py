"""Honest statuses through the real server: DNS-01 refused without its settings, and a
NOT_CONFIGURED domain looked at again when the broker restarts with the setting.

(CAA → Action required with the record, and back, is in test_letsencrypt.py; the quota
hold as Creating in test_retries_and_quotas.py.)
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import started_broker
from tests.integration.lab import Lab, in_use, unique_domain, verify_chain, wait_status
from tests.rpc import reason


async def test_a_wildcard_or_dns01_domain_is_refused_without_dns01_settings(
    lab: Lab, tmp_path: Path
) -> None:
    async with started_broker(lab.settings(tmp_path)) as broker:
        before = await broker.running.store.current_revision()
        wildcard = f"*.{unique_domain('w')}"
        plain = unique_domain("d")
        for request in (
            broker_pb2.IssueCertificateRequest(domain=wildcard, app="shop"),
            broker_pb2.IssueCertificateRequest(
                domain=plain, app="shop", challenge_type=domain_pb2.CHALLENGE_TYPE_DNS_01
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await broker.stub.IssueCertificate(request)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason(caught.value) == "DNS01_NOT_CONFIGURED"
            assert "CERTBROKER_DNS01_ZONE" in (caught.value.details() or "")
        assert await broker.running.store.current_revision() == before  # nothing written
        # Without Let's Encrypt it needs no challenge: a custom-certificate wildcard is fine.
        reply = await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain=wildcard, app="shop", disable_letsencrypt=True
            )
        )
        assert reply.domain.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_DISABLED
        # ...and switching Let's Encrypt on for it is refused the same way.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=wildcard, app="shop")
            )
        assert reason(caught.value) == "DNS01_NOT_CONFIGURED"


async def test_not_configured_is_looked_at_again_when_the_broker_restarts_with_the_setting(
    lab: Lab, tmp_path: Path
) -> None:
    name = unique_domain()
    issued_before = lab.pebble.issued_count()
    async with started_broker(lab.settings(tmp_path, acme_directory="")) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        )
        parked = await wait_status(
            broker.stub, name, lambda d: d.retry.last_error_reason == "NOT_CONFIGURED"
        )
    assert "CERTBROKER_ACME_DIRECTORY" in parked.retry.last_error_message
    assert not parked.retry.HasField("next_attempt_time")  # no timer: only a restart helps
    assert not parked.HasField("next_check_time")
    assert lab.pebble.issued_count() == issued_before

    async with started_broker(lab.settings(tmp_path)) as broker:  # now with the CA
        status = await wait_status(broker.stub, name, in_use)
    verify_chain(status.lets_encrypt_certificate.chain_pem, lab.pebble.root_pem(), name)
