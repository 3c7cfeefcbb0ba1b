"""Automatic Let's Encrypt against a real ACME CA (Pebble) and real DNS (challtestsrv)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import started_broker
from tests.integration.lab import Lab, in_use, unique_domain, verify_chain, wait_status


async def test_domain_reaches_in_use_with_a_chain_valid_for_its_name(
    lab: Lab, tmp_path: Path
) -> None:
    name = unique_domain()
    async with started_broker(lab.settings(tmp_path)) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        )
        status = await wait_status(broker.stub, name, in_use)
    assert status.serving_source == domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT
    cert = status.lets_encrypt_certificate
    assert list(cert.sans) == [name]
    verify_chain(cert.chain_pem, lab.pebble.root_pem(), name)
    assert status.dns.points_to_platform
    assert status.retry.attempt == 0
    # two thirds of Pebble's 90 days less the per-name spread (priorities.spread_renewal),
    # counted from receipt, a moment after notBefore
    life = cert.not_after.ToDatetime() - cert.not_before.ToDatetime()
    renew_at = status.renewal_time.ToDatetime() - cert.not_before.ToDatetime()
    assert life * (2 / 3 - 1 / 12) <= renew_at < life * 2 / 3 + timedelta(seconds=10)


async def test_pending_dns_until_the_record_points_then_issued(lab: Lab, tmp_path: Path) -> None:
    name = unique_domain()
    lab.dns.add_a(name, ["192.0.2.10"])
    clock = FakeClock(datetime.now(UTC))
    try:
        async with started_broker(lab.settings(tmp_path), clock) as broker:
            issued_before = lab.pebble.issued_count()
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop")
            )
            pending = await wait_status(
                broker.stub, name, lambda d: d.HasField("dns") and not d.dns.points_to_platform
            )
            assert pending.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS
            assert "A 192.0.2.10" in pending.dns.answered
            assert "A 127.0.0.1" in pending.dns.expected
            assert pending.retry.last_error_reason == "DNS_NOT_POINTING"
            assert pending.retry.attempt == 0  # waiting for DNS is not a failure
            checked = pending.retry.next_attempt_time.ToDatetime(UTC)
            assert checked - clock.now() == timedelta(seconds=60)  # the seed's 60-second check
            assert lab.pebble.issued_count() == issued_before  # the CA heard nothing

            lab.dns.clear_a(name)
            lab.dns.add_a(name, ["127.0.0.1"])
            clock.advance(timedelta(seconds=59))
            still = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
            assert still.domain.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS
            clock.advance(timedelta(seconds=1))
            status = await wait_status(broker.stub, name, in_use)
            verify_chain(status.lets_encrypt_certificate.chain_pem, lab.pebble.root_pem(), name)
    finally:
        lab.dns.clear_a(name)


async def test_stray_aaaa_keeps_the_domain_pending(lab: Lab, tmp_path: Path) -> None:
    name = unique_domain()
    lab.dns.add_aaaa(name, ["2001:db8::1"])
    try:
        async with started_broker(lab.settings(tmp_path)) as broker:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop")
            )
            pending = await wait_status(
                broker.stub, name, lambda d: d.retry.last_error_reason != ""
            )
            assert pending.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS
            assert pending.retry.last_error_reason == "DNS_STRAY_AAAA"
            assert any("2001:db8::1" in a for a in pending.dns.answered)
    finally:
        lab.dns.clear_aaaa(name)


async def test_caa_forbidding_our_ca_is_action_required_until_the_record_allows_it(
    lab: Lab, tmp_path: Path
) -> None:
    """No order while CAA forbids; the exact record to add; back by itself once it is there."""
    name = unique_domain()
    parent = name.split(".", 1)[1]
    lab.dns.add_caa(parent, [("issue", "other-ca.example")])
    clock = FakeClock(datetime.now(UTC))
    try:
        async with started_broker(lab.settings(tmp_path), clock) as broker:
            issued_before = lab.pebble.issued_count()
            orders_before = lab.pebble.log_text().count(name)
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop")
            )
            status = await wait_status(
                broker.stub, name, lambda d: d.retry.last_error_reason == "CAA_FORBIDS"
            )
            assert status.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_ACTION_REQUIRED
            assert status.action_required == f'{parent}. CAA 0 issue "letsencrypt.org"'
            assert "other-ca.example" in status.retry.last_error_message
            assert status.dns.points_to_platform  # DNS is fine: not Pending DNS
            assert status.retry.attempt == 0  # the CA heard nothing: no failed try
            wait = status.retry.next_attempt_time.ToDatetime(UTC) - clock.now()
            assert wait == timedelta(seconds=60)  # the DNS cadence, not a daily retry
            assert lab.pebble.issued_count() == issued_before
            assert lab.pebble.log_text().count(name) == orders_before  # Pebble never saw it

            clock.advance(timedelta(seconds=60))  # re-checked, still forbidden
            again = await wait_status(
                broker.stub,
                name,
                lambda d: d.retry.next_attempt_time.ToDatetime(UTC) > clock.now(),
            )
            assert again.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_ACTION_REQUIRED

            lab.dns.clear_caa(parent)
            lab.dns.add_caa(parent, [("issue", "letsencrypt.org")])
            clock.advance(timedelta(seconds=60))
            done = await wait_status(broker.stub, name, in_use)
            assert done.action_required == ""
            verify_chain(done.lets_encrypt_certificate.chain_pem, lab.pebble.root_pem(), name)
    finally:
        lab.dns.clear_caa(parent)


async def test_disabled_domain_is_never_sent_to_the_ca(lab: Lab, tmp_path: Path) -> None:
    name = unique_domain()
    async with started_broker(lab.settings(tmp_path)) as broker:
        reply = await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop", disable_letsencrypt=True)
        )
        assert reply.domain.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_DISABLED
        assert not reply.domain.HasField("next_check_time")
        # a second domain issued after it proves the scheduler ran past the disabled one
        other = unique_domain()
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=other, app="shop")
        )
        await wait_status(broker.stub, other, in_use)
        status = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
        assert status.domain.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_DISABLED
    assert name not in lab.pebble.log_text()


async def test_renewal_at_two_thirds_keeps_serving_until_the_new_one(
    lab: Lab, tmp_path: Path
) -> None:
    name = unique_domain()
    clock = FakeClock(datetime.now(UTC))
    async with started_broker(lab.settings(tmp_path), clock) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        )
        first = await wait_status(broker.stub, name, in_use)
        renew_at = first.renewal_time.ToDatetime(UTC)
        clock.set(renew_at - timedelta(seconds=1))
        broker.running.scheduler.wake()
        same = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
        assert same.domain.lets_encrypt_certificate.serial == first.lets_encrypt_certificate.serial
        clock.set(renew_at)
        renewed = await wait_status(
            broker.stub,
            name,
            lambda d: d.lets_encrypt_certificate.serial != first.lets_encrypt_certificate.serial,
        )
    assert renewed.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE
    assert renewed.serving_source == domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT
    # Pebble dates certificates by the real clock, our injected one is 60 days ahead:
    # the new renewal time is two thirds into what was left when we got it (about 20
    # days on), not already past, so there is no renewal loop.
    assert renewed.renewal_time.ToDatetime(UTC) >= renew_at + timedelta(days=10)


async def test_watcher_sees_every_transition_to_in_use_in_revision_order(
    lab: Lab, tmp_path: Path
) -> None:
    name = unique_domain()
    async with started_broker(lab.settings(tmp_path)) as broker:
        stream = broker.stub.WatchStatus(
            broker_pb2.WatchStatusRequest(after_revision=0, domains=[name])
        )
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        )
        states = []
        revisions = []
        async for response in stream:
            event = response.event
            if event.type != broker_pb2.EVENT_TYPE_DOMAIN_UPDATED:
                continue
            revisions.append(event.revision)
            if not states or states[-1] != event.domain.lets_encrypt_state:
                states.append(event.domain.lets_encrypt_state)
            if event.domain.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE:
                break
        stream.cancel()
    assert states == [
        domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS,
        domain_pb2.LETS_ENCRYPT_STATE_CREATING,
        domain_pb2.LETS_ENCRYPT_STATE_IN_USE,
    ]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)


async def test_routers_can_receive_pending_http01_challenges(lab: Lab, tmp_path: Path) -> None:
    name = unique_domain()
    async with started_broker(lab.settings(tmp_path)) as broker:
        stream = broker.stub.WatchStatus(
            broker_pb2.WatchStatusRequest(
                after_revision=await broker.running.store.current_revision(),
                include_challenges=True,
            )
        )
        plain = broker.stub.WatchStatus(
            broker_pb2.WatchStatusRequest(
                after_revision=await broker.running.store.current_revision()
            )
        )
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        )
        added = removed = None
        async for response in stream:
            event = response.event
            if event.type == broker_pb2.EVENT_TYPE_CHALLENGE_ADDED:
                added = event.challenge
            if event.type == broker_pb2.EVENT_TYPE_CHALLENGE_REMOVED:
                removed = event.challenge
                break
        stream.cancel()
        assert added is not None and removed is not None
        assert added.token == removed.token
        assert added.key_authorization.startswith(added.token + ".")
        # a watcher that did not ask for challenges never sees them
        async for response in plain:
            assert response.event.type not in (
                broker_pb2.EVENT_TYPE_CHALLENGE_ADDED,
                broker_pb2.EVENT_TYPE_CHALLENGE_REMOVED,
            )
            if response.event.domain.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE:
                break
        plain.cancel()
