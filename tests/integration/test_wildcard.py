"""Wildcards by DNS-01 through a one-time delegation, against Pebble and a real BIND.

One ``named`` is the only DNS server here: authoritative for the customer
zone (``example.test``, where a test creates or deletes the delegation CNAME
by dynamic update) and for the broker's challenge zone (``acme.broker.test``,
which the broker updates by RFC 2136 with its TSIG key). Pebble validates
through it (``-dnsserver``) and the broker's resolver asks it, so the
delegation the broker checks is the very one the CA follows.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from certbroker import delegation
from certbroker.acme import (
    AcmeIssuer,
    AcmeProblem,
    Dns01Updater,
    Http01Responder,
    MemoryAccountStore,
    TsigKey,
)
from certbroker.acme.keys import generate_private_key
from certbroker.clock import FakeClock
from certbroker.delegation import LabelKey
from certbroker.model import KeyAlgorithm
from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import label_key, started_broker
from tests.infra.bind import Bind, BindKey
from tests.infra.pebble import Pebble
from tests.integration.dns01 import AHEAD, base_name, delegate
from tests.integration.dns01 import dns01_settings as settings
from tests.integration.lab import in_use, verify_chain, wait_status

S = domain_pb2
KEY = LabelKey(secrets.token_bytes(32))


def issue(name: str) -> broker_pb2.IssueCertificateRequest:
    return broker_pb2.IssueCertificateRequest(domain=name, app="shop")


def ask(d: domain_pb2.Domain) -> bool:
    return d.lets_encrypt_state == S.LETS_ENCRYPT_STATE_ACTION_REQUIRED


async def test_wildcard_asks_for_the_delegation_then_issues_renews_and_notices_removal(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    base = base_name()
    name = f"*.{base}"
    clock = FakeClock(datetime.now(UTC) + AHEAD)
    issued_before = pebble.issued_count()
    async with started_broker(settings(tmp_path, bind, pebble), clock) as broker:
        label = (await label_key(broker)).label("shop", name)
        target = f"{label}.{bind.challenge_zone}"
        record = f"_acme-challenge.{base}. CNAME {target}."
        # 1. Added: ACTION_REQUIRED with the record, ready to paste; the CA heard nothing.
        await broker.stub.IssueCertificate(issue(name))
        waiting = await wait_status(broker.stub, name, ask)
        assert waiting.action_required == record
        assert re.fullmatch(r"[a-z2-7]{20}", label)
        assert waiting.challenge_type == S.CHALLENGE_TYPE_DNS_01
        assert waiting.retry.last_error_reason == "DNS01_DELEGATION_MISSING"
        assert record in waiting.retry.last_error_message
        assert waiting.retry.attempt == 0  # waiting for the customer is not a failure
        next_check = waiting.retry.next_attempt_time.ToDatetime(UTC)
        assert next_check - clock.now() == timedelta(seconds=60)
        assert base not in pebble.log_text()
        # the label is stable: asking again names the same record
        again = await broker.stub.IssueCertificate(issue(name))
        assert again.domain.action_required == record
        # That was a retry-now: the re-check is due at once and runs in the scheduler.
        # Wait until it has (its next check is 60 s away again) before the clock moves,
        # or it could run on the moved clock (and find the record of step 2).
        now = clock.now()
        assert again.domain.retry.next_attempt_time.ToDatetime(UTC) == now
        rechecked = await wait_status(
            broker.stub,
            name,
            lambda d: d.retry.next_attempt_time.ToDatetime(UTC) == now + timedelta(seconds=60),
        )
        assert rechecked.action_required == record

        # 2. The customer creates the record; the next 60-second check moves on.
        bind.set_cname(f"_acme-challenge.{base}", target)
        clock.advance(timedelta(seconds=59))
        broker.running.scheduler.wake()
        still = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
        assert still.domain.lets_encrypt_state == S.LETS_ENCRYPT_STATE_ACTION_REQUIRED
        clock.advance(timedelta(seconds=1))
        first = await wait_status(broker.stub, name, in_use)
        assert first.action_required == ""
        assert first.serving_source == S.CERTIFICATE_SOURCE_LETS_ENCRYPT
        assert list(first.lets_encrypt_certificate.sans) == [name]
        verify_chain(first.lets_encrypt_certificate.chain_pem, pebble.root_pem(), f"a.{base}")
        assert bind.query(target, "TXT") == []  # the challenge value is gone again
        assert pebble.issued_count() == issued_before + 1

        # 3. The delegation disappears: the daily check says so; the certificate keeps serving.
        bind.delete_name(f"_acme-challenge.{base}")
        check_at = first.retry.next_attempt_time.ToDatetime(UTC)
        assert check_at - clock.now() == timedelta(days=1)
        clock.set(check_at)
        lost = await wait_status(broker.stub, name, lambda d: d.action_required != "")
        assert lost.action_required == record
        assert lost.retry.last_error_reason == "DNS01_DELEGATION_MISSING"
        assert lost.lets_encrypt_state == S.LETS_ENCRYPT_STATE_IN_USE  # still serving
        assert lost.serving_source == S.CERTIFICATE_SOURCE_LETS_ENCRYPT
        assert lost.lets_encrypt_certificate.serial == first.lets_encrypt_certificate.serial
        # at the renewal time it is still missing: no order, the old certificate serves
        renew_at = first.renewal_time.ToDatetime(UTC)
        clock.set(renew_at)
        held = await wait_status(
            broker.stub, name, lambda d: d.retry.next_attempt_time.ToDatetime(UTC) > renew_at
        )
        assert held.action_required == record
        assert held.lets_encrypt_certificate.serial == first.lets_encrypt_certificate.serial
        assert held.serving_source == S.CERTIFICATE_SOURCE_LETS_ENCRYPT
        assert pebble.issued_count() == issued_before + 1

        # 4. Restored: the next check renews with no other action.
        bind.set_cname(f"_acme-challenge.{base}", target)
        clock.advance(timedelta(seconds=60))
        renewed = await wait_status(
            broker.stub,
            name,
            lambda d: d.lets_encrypt_certificate.serial != first.lets_encrypt_certificate.serial,
        )
        assert renewed.lets_encrypt_state == S.LETS_ENCRYPT_STATE_IN_USE
        assert renewed.action_required == ""
        assert renewed.retry.attempt == 0
        verify_chain(renewed.lets_encrypt_certificate.chain_pem, pebble.root_pem(), f"b.{base}")
        assert bind.query(target, "TXT") == []


async def test_renewal_of_a_delegated_wildcard_needs_no_action(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    base = base_name()
    name = f"*.{base}"
    clock = FakeClock(datetime.now(UTC) + AHEAD)
    async with started_broker(settings(tmp_path, bind, pebble), clock) as broker:
        await delegate(broker, bind, name)
        await broker.stub.IssueCertificate(issue(name))
        first = await wait_status(broker.stub, name, in_use)
        clock.set(first.renewal_time.ToDatetime(UTC))
        renewed = await wait_status(
            broker.stub,
            name,
            lambda d: d.lets_encrypt_certificate.serial != first.lets_encrypt_certificate.serial,
        )
    assert renewed.lets_encrypt_state == S.LETS_ENCRYPT_STATE_IN_USE
    assert renewed.action_required == ""
    verify_chain(renewed.lets_encrypt_certificate.chain_pem, pebble.root_pem(), f"x.{base}")


async def test_wildcard_with_its_apex_through_the_api(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    base = base_name()
    name = f"*.{base}"
    async with started_broker(settings(tmp_path, bind, pebble)) as broker:
        await delegate(broker, bind, name)
        request = issue(name)
        request.include_apex = True
        reply = await broker.stub.IssueCertificate(request)
        assert reply.domain.include_apex
        status = await wait_status(broker.stub, name, in_use)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            apex_only = issue(f"www.{base}")
            apex_only.include_apex = True
            await broker.stub.IssueCertificate(apex_only)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(status.lets_encrypt_certificate.sans) == sorted([name, base])
    for host in (base, f"a.{base}"):
        verify_chain(status.lets_encrypt_certificate.chain_pem, pebble.root_pem(), host)


async def test_a_wrong_tsig_key_is_a_clear_error_and_no_order(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    base = base_name()
    name = f"*.{base}"
    wrong = BindKey(bind.broker_key.name, "hmac-sha256", BindKey.generate("x").secret)
    issued_before = pebble.issued_count()
    async with started_broker(settings(tmp_path, bind, pebble, wrong)) as broker:
        await delegate(broker, bind, name)
        await broker.stub.IssueCertificate(issue(name))
        status = await wait_status(broker.stub, name, lambda d: d.retry.last_error_reason != "")
    assert status.retry.last_error_reason == "DNS01_UPDATE_REFUSED"
    assert "BADSIG" in status.retry.last_error_message
    assert "broker-key" in status.retry.last_error_message
    assert status.retry.attempt == 1  # the usual backoff: one minute
    retry = status.retry
    gap = retry.next_attempt_time.ToDatetime(UTC) - retry.last_error_time.ToDatetime(UTC)
    assert gap == timedelta(minutes=1)
    assert status.action_required == ""  # nothing for the customer to do
    assert status.lets_encrypt_state != S.LETS_ENCRYPT_STATE_IN_USE
    assert base not in pebble.log_text()  # no order at the CA
    assert pebble.issued_count() == issued_before


async def test_a_plain_name_may_use_dns01_without_pointing_at_the_platform(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    name = base_name()  # no A record anywhere: HTTP-01 could not work
    async with started_broker(settings(tmp_path, bind, pebble)) as broker:
        await delegate(broker, bind, name)
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain=name, app="shop", challenge_type=S.CHALLENGE_TYPE_DNS_01
            )
        )
        status = await wait_status(broker.stub, name, in_use)
    assert list(status.lets_encrypt_certificate.sans) == [name]
    verify_chain(status.lets_encrypt_certificate.chain_pem, pebble.root_pem(), name)


@pytest.fixture
async def issuer(bind: Bind, pebble: Pebble) -> AsyncIterator[tuple[AcmeIssuer, Dns01Updater]]:
    key = TsigKey(bind.broker_key.name, bind.broker_key.algorithm, bind.broker_key.secret)
    updater = Dns01Updater(bind.challenge_zone, ("127.0.0.1", bind.port), key)
    iss = AcmeIssuer(
        pebble.directory_url,
        ca_bundle=pebble.ca_bundle_path,
        email=None,
        account_store=MemoryAccountStore(),
        responder=Http01Responder(),
        dns01=updater,
        order_timeout=30,
    )
    await iss.start()
    try:
        yield iss, updater
    finally:
        await iss.close()


async def test_wildcard_and_apex_in_one_order_share_the_delegation(
    bind: Bind, pebble: Pebble, issuer: tuple[AcmeIssuer, Dns01Updater]
) -> None:
    """Two authorizations for one ``_acme-challenge`` name: two TXT values side by side."""
    iss, updater = issuer
    base = base_name()
    label = KEY.label("shop", base)
    bind.set_cname(f"_acme-challenge.{base}", delegation.target(label, bind.challenge_zone))
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    cert = await iss.issue([f"*.{base}", base], key, dns01=True, dns01_label=label)
    for host in (base, f"www.{base}"):
        verify_chain(cert.chain_pem, pebble.root_pem(), host)
    assert bind.query(updater.record_name(label), "TXT") == []


async def test_values_are_removed_when_the_validation_fails(
    bind: Bind, issuer: tuple[AcmeIssuer, Dns01Updater]
) -> None:
    """No delegation, so the CA finds no TXT: the order fails and our value is gone anyway."""
    iss, updater = issuer
    base = base_name()
    label = KEY.label("shop", base)
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    with pytest.raises(AcmeProblem) as caught:
        await iss.issue([f"*.{base}"], key, dns01=True, dns01_label=label)
    assert caught.value.retryable  # the usual backoff follows
    assert bind.query(updater.record_name(label), "TXT") == []


async def test_a_dns01_order_without_a_label_fails_before_writing_anything(
    issuer: tuple[AcmeIssuer, Dns01Updater],
) -> None:
    """No label is ever guessed from the name (that would be the pre-binding label)."""
    iss, _ = issuer
    with pytest.raises(AcmeProblem) as caught:
        await iss.issue([f"*.{base_name()}"], generate_private_key(KeyAlgorithm.ECDSA_P256))
    assert caught.value.reason == "DNS01_LABEL_MISSING"
    assert not caught.value.retryable
