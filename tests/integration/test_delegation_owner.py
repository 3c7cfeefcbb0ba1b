"""A DNS-01 delegation authorises its owner only: against a real BIND and Pebble.

The customer of app ``alice`` points ``_acme-challenge.<base>`` at alice's
label. App ``mallory`` must never get a certificate through that record: while
alice owns the name the broker refuses mallory outright (one family, one
owner); after alice leaves, mallory's request is accepted but asks for a record
of its own (another label) and no order reaches the CA until the customer
creates it. An upgrade keeps the labels existing delegations use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from certbroker import delegation
from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import label_key, started_broker
from tests.infra.bind import Bind
from tests.infra.pebble import Pebble
from tests.integration.dns01 import AHEAD, base_name, delegate, dns01_settings
from tests.integration.lab import in_use, verify_chain, wait_status
from tests.rpc import reason
from tests.store.legacy import LegacyDomain, schema_002_database

S = domain_pb2


def request(
    name: str, app: str, *, include_apex: bool = False, dns01: bool = False
) -> broker_pb2.IssueCertificateRequest:
    return broker_pb2.IssueCertificateRequest(
        domain=name,
        app=app,
        include_apex=include_apex,
        challenge_type=S.CHALLENGE_TYPE_DNS_01 if dns01 else S.CHALLENGE_TYPE_UNSPECIFIED,
    )


def asks(d: domain_pb2.Domain) -> bool:
    return d.lets_encrypt_state == S.LETS_ENCRYPT_STATE_ACTION_REQUIRED


async def test_another_app_never_gets_a_certificate_through_alices_delegation(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    base = base_name()
    wildcard = f"*.{base}"
    clock = FakeClock(datetime.now(UTC) + AHEAD)
    async with started_broker(dns01_settings(tmp_path, bind, pebble), clock) as broker:
        stub = broker.stub
        alice_target = await delegate(broker, bind, wildcard, app="alice")
        await stub.IssueCertificate(request(wildcard, "alice", include_apex=True))
        alice = await wait_status(stub, wildcard, in_use)
        assert sorted(alice.lets_encrypt_certificate.sans) == sorted([wildcard, base])
        issued = pebble.issued_count()

        # 1. While alice owns it: refused, every way in, without naming alice.
        for name, apex, dns01 in (
            (wildcard, True, False),
            (wildcard, False, False),
            (base, False, True),
            (base, False, False),
            (f"www.{base}", False, False),
        ):
            ask = request(name, "mallory", include_apex=apex, dns01=dns01)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.IssueCertificate(ask)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason(caught.value) == "DOMAIN_OWNED_BY_OTHER_APP"
            assert "alice" not in (caught.value.details() or "")

        # 2. Alice leaves; the customer's CNAME to alice's label stays behind.
        await stub.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=wildcard, app="alice"))
        orders_seen = pebble.log_text().count(base)
        await stub.IssueCertificate(request(wildcard, "mallory", include_apex=True))
        await stub.IssueCertificate(request(base, "mallory", dns01=True))
        mallory_target = delegation.target(
            (await label_key(broker)).label("mallory", wildcard), bind.challenge_zone
        )
        assert mallory_target != alice_target
        record = f"_acme-challenge.{base}. CNAME {mallory_target}."
        for name in (wildcard, base):
            waiting = await wait_status(stub, name, asks)
            assert waiting.action_required == record
            assert waiting.retry.last_error_reason == "DNS01_DELEGATION_WRONG"
            assert "not to this domain's record" in waiting.retry.last_error_message
            assert alice_target not in waiting.action_required
        # the 60-second checks come and go: still waiting, and the CA heard nothing
        for _ in range(3):
            clock.advance(timedelta(seconds=60))
            broker.running.scheduler.wake()
            for name in (wildcard, base):
                again = await wait_status(
                    stub, name, lambda d: d.retry.last_error_time.ToDatetime(UTC) >= clock.now()
                )
                assert asks(again)
                assert not again.HasField("lets_encrypt_certificate")
        assert pebble.issued_count() == issued
        assert pebble.log_text().count(base) == orders_seen
        assert bind.query(alice_target, "TXT") == []

        # 3. Only when the customer points the record at mallory's label does mallory get one.
        bind.set_cname(delegation.challenge_name(base), mallory_target)
        clock.advance(timedelta(seconds=60))
        broker.running.scheduler.wake()
        mallory = await wait_status(stub, wildcard, in_use)
        verify_chain(mallory.lets_encrypt_certificate.chain_pem, pebble.root_pem(), base)


async def test_an_upgrade_keeps_the_delegation_of_an_existing_wildcard(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    """A schema-002 database: alice's wildcard keeps the record its customer made; mallory's
    later claim of the apex (made before owner binding existed) gets a record of its own."""
    alice_base, other_base = base_name(), base_name()
    now = datetime.now(UTC)
    settings = dns01_settings(tmp_path, bind, pebble)
    long_ago, lately = now - timedelta(days=9), now - timedelta(days=1)
    schema_002_database(
        Path(settings.db),
        [
            LegacyDomain(f"*.{alice_base}", "alice", "DNS_01", long_ago, True, now),
            LegacyDomain(other_base, "alice", "DNS_01", long_ago, False, now),
            LegacyDomain(f"*.{other_base}", "mallory", "DNS_01", lately, False, now),
        ],
    )
    legacy = f"{delegation.legacy_label(alice_base)}.{bind.challenge_zone}"
    bind.set_cname(delegation.challenge_name(alice_base), legacy)
    other_legacy = f"{delegation.legacy_label(other_base)}.{bind.challenge_zone}"
    bind.set_cname(delegation.challenge_name(other_base), other_legacy)
    issued = pebble.issued_count()
    async with started_broker(settings, FakeClock(now + AHEAD)) as broker:
        alice = await wait_status(broker.stub, f"*.{alice_base}", in_use)
        sans = sorted(alice.lets_encrypt_certificate.sans)
        assert sans == sorted([f"*.{alice_base}", alice_base])
        await wait_status(broker.stub, other_base, in_use)
        mallory = await wait_status(broker.stub, f"*.{other_base}", asks)
        assert other_legacy not in mallory.action_required
        label = (await label_key(broker)).label("mallory", other_base)
        assert mallory.action_required.endswith(f"CNAME {label}.{bind.challenge_zone}.")
        assert not mallory.HasField("lets_encrypt_certificate")
    assert pebble.issued_count() == issued + 2
