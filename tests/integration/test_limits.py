"""The CA's buckets through the real broker and Pebble: a held domain says which bucket
holds it and until when, renewals pass a used-up registered-domain bucket, and
first certificates beyond the account's new-order tokens wait unworked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from certbroker.clock import FakeClock
from certbroker.limits import Bucket
from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import started_broker
from tests.integration.lab import Lab, in_use, unique_domain, wait_status

WEEK = timedelta(days=7)


def _issue(name: str) -> broker_pb2.IssueCertificateRequest:
    return broker_pb2.IssueCertificateRequest(domain=name, app="shop")


async def test_a_renewal_proceeds_while_the_registered_domain_bucket_is_used_up(
    lab: Lab, tmp_path: Path
) -> None:
    """Let's Encrypt exempts renewals of the same names from that bucket; so do we."""
    clock = FakeClock(datetime.now(UTC))
    settings = lab.settings(tmp_path, quota_per_registered_domain=Bucket(1, WEEK))
    base = unique_domain("x").split(".", 1)[1]  # one registered domain for all three
    renewing, newcomer, late = f"r.{base}", f"n.{base}", f"l.{base}"
    async with started_broker(settings, clock) as broker:
        await broker.stub.IssueCertificate(_issue(renewing))
        first = await wait_status(broker.stub, renewing, in_use)
        clock.set(first.renewal_time.ToDatetime(UTC) - timedelta(minutes=1))
        await broker.stub.IssueCertificate(_issue(newcomer))  # takes the week's one token
        await wait_status(broker.stub, newcomer, in_use)
        await broker.stub.IssueCertificate(_issue(late))
        held = await wait_status(
            broker.stub, late, lambda d: d.retry.last_error_reason == "QUOTA_REGISTERED_DOMAIN"
        )
        assert held.retry.attempt == 0  # a hold, not a failure
        assert f"registered domain {base.split('.', 1)[1]}" in held.retry.last_error_message
        issued = lab.pebble.issued_count()
        clock.advance(timedelta(minutes=1))  # the renewal time
        broker.running.scheduler.wake()
        renewed = await wait_status(
            broker.stub,
            renewing,
            lambda d: d.lets_encrypt_certificate.serial != first.lets_encrypt_certificate.serial,
        )
        assert renewed.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE
        assert lab.pebble.issued_count() == issued + 1
        still = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=late))
        assert still.domain.retry.last_error_reason == "QUOTA_REGISTERED_DOMAIN"


async def test_first_certificates_beyond_the_accounts_tokens_wait_for_the_next_one(
    lab: Lab, tmp_path: Path
) -> None:
    clock = FakeClock(datetime.now(UTC))
    settings = lab.settings(tmp_path, quota_account_orders=Bucket(2, timedelta(hours=1)))
    names = [unique_domain(f"a{i}") for i in range(3)]
    async with started_broker(settings, clock) as broker:
        start = clock.now()
        for name in names[:2]:
            await broker.stub.IssueCertificate(_issue(name))
            await wait_status(broker.stub, name, in_use)
        orders = lab.pebble.order_count()
        await broker.stub.IssueCertificate(_issue(names[2]))
        held = await wait_status(
            broker.stub, names[2], lambda d: d.retry.last_error_reason == "QUOTA_ACCOUNT_ORDERS"
        )
        # a hold, not a failure; the next token is 30 minutes after the two
        assert held.retry.attempt == 0
        assert held.retry.next_attempt_time.ToDatetime(UTC) == start + timedelta(minutes=30)
        assert "waits for a token" in held.retry.last_error_message
        assert lab.pebble.order_count() == orders  # the CA heard nothing
        clock.set(start + timedelta(minutes=30))
        await wait_status(broker.stub, names[2], in_use)
