"""The whole lifecycle under a fake clock: the real scheduler and store, fake CA and DNS.

Each test drives time by hand (``World.advance``) and reads what a status page
would see. The Pebble tests (tests/integration) prove the same paths against a
real CA; these prove the rules, in seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from certbroker import lifecycle
from certbroker.acme import ari
from certbroker.acme.keys import generate_private_key
from certbroker.acme.problems import AcmeProblem
from certbroker.errors import FailedPrecondition
from certbroker.limits import Bucket, Hold, Limits, LimitsLedger, OrderRequest
from certbroker.model import LetsEncryptState, Source
from certbroker.ports import RenewalWindow
from certbroker.scheduler import Policy
from certbroker.store.base import PendingOrder, Transaction
from tests.fakes.dns01 import FakeDns01
from tests.fakes.issuer import FakeIssuer, problem
from tests.fakes.world import World, world

S = LetsEncryptState
NAME = "www.shop.test"


async def states_seen(w: World, name: str) -> list[LetsEncryptState]:
    """The states watchers were told, in order, repeats folded."""
    seen: list[LetsEncryptState] = []
    for event in await w.store.events_after(0, 10_000):
        domain = event.domain
        if event.domain_name == name and domain is not None and domain.le_state not in seen[-1:]:
            seen.append(domain.le_state)
    return seen


async def test_a_new_domain_is_checked_ordered_and_in_use_with_its_key_sealed_once(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.add(NAME)
        await w.settled()
        done = await w.domain(NAME)
        assert w.issuer is not None
        assert [c.names for c in w.issuer.calls] == [(NAME,)]
        assert await states_seen(w, NAME) == [S.PENDING_DNS, S.CREATING, S.IN_USE]
    assert done.le_state is S.IN_USE and done.serving is Source.LETS_ENCRYPT
    assert done.dns is not None and done.dns.points_to_platform
    # Sealed once into the order row; the certificate keeps that blob: never opened.
    assert (w.sealer.seals, w.sealer.opens) == (1, 0)


async def test_pending_dns_only_while_dns_does_not_point(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.dns.not_pointing.add(NAME)
        await w.add(NAME)
        await w.settled()
        pending = await w.domain(NAME)
        assert pending.le_state is S.PENDING_DNS
        assert pending.retry.last_error_reason == "DNS_NOT_POINTING"
        assert pending.retry.next_attempt_at == w.clock.now() + timedelta(seconds=60)
        assert pending.retry.attempt == 0
        assert w.issuer is not None and w.issuer.calls == []

        w.dns.not_pointing.clear()
        await w.advance(timedelta(seconds=60))
        assert (await w.domain(NAME)).le_state is S.IN_USE


async def test_caa_forbidding_is_action_required_with_the_record_until_a_recheck_passes(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        assert w.issuer is not None
        w.dns.caa["shop.test"] = [("issue", "other-ca.example")]
        await w.add(NAME)
        await w.settled()
        held = await w.domain(NAME)
        assert held.le_state is S.ACTION_REQUIRED
        assert held.action_required == 'shop.test. CAA 0 issue "letsencrypt.org"'
        assert held.retry.last_error_reason == "CAA_FORBIDS"
        assert held.retry.attempt == 0  # the CA heard nothing
        assert held.retry.next_attempt_at == w.clock.now() + timedelta(seconds=60)

        checks = w.dns.calls["caa"]
        await w.advance(timedelta(seconds=60))  # re-checked at the DNS cadence
        assert w.dns.calls["caa"] == checks + 1
        assert (await w.domain(NAME)).le_state is S.ACTION_REQUIRED
        assert w.issuer.calls == []

        w.dns.caa["shop.test"] = [("issue", "letsencrypt.org")]
        await w.advance(timedelta(seconds=60))
        done = await w.domain(NAME)
        assert done.le_state is S.IN_USE and done.action_required == ""
        seen = await states_seen(w, NAME)
    assert seen == [S.PENDING_DNS, S.ACTION_REQUIRED, S.CREATING, S.IN_USE]


async def test_a_wildcard_forbidden_by_issuewild_is_told_the_issuewild_record(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, dns01=True) as w:
        added = await w.add("*.w.shop.test")
        assert w.dns01 is not None
        w.dns.cnames["_acme-challenge.w.shop.test"] = f"{added.delegation_label}.{w.dns01.zone}"
        w.dns.caa["w.shop.test"] = [("issue", "letsencrypt.org"), ("issuewild", "other.example")]
        await w.settled()
        held = await w.domain("*.w.shop.test")
    assert held.le_state is S.ACTION_REQUIRED
    assert held.action_required == 'w.shop.test. CAA 0 issuewild "letsencrypt.org"'


async def test_a_quota_hold_is_creating_with_the_reason_and_the_next_slot(
    tmp_path: Path,
) -> None:
    one_a_week = Limits(registered_domain=Bucket(1, timedelta(days=7)))
    async with world(tmp_path, policy=Policy(limits=one_a_week)) as w:
        await w.add("a.shop.test")
        await w.settled()
        first = w.clock.now()
        await w.add(NAME)
        await w.settled()
        held = await w.domain(NAME)
        assert held.le_state is S.CREATING
        assert held.retry.last_error_reason == "QUOTA_REGISTERED_DOMAIN"
        assert held.retry.next_attempt_at == first + timedelta(days=7)  # the next token
        assert "registered domain shop.test" in held.retry.last_error_message
        assert held.retry.attempt == 0
        await w.until(first + timedelta(days=7))
        assert (await w.domain(NAME)).le_state is S.IN_USE


async def test_a_terminal_refusal_is_action_required_rechecked_every_minute_ordered_with_backoff(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        assert w.issuer is not None
        refusal = problem("ACME_REJECTED_IDENTIFIER", retryable=False)
        w.issuer.fail(NAME, refusal, refusal)
        await w.add(NAME)
        await w.settled()
        refused = await w.domain(NAME)
        assert refused.le_state is S.ACTION_REQUIRED
        assert "will not issue for www.shop.test" in refused.action_required
        assert refused.retry.attempt == 1
        assert refused.retry.next_attempt_at == w.clock.now() + timedelta(seconds=60)

        await w.advance(timedelta(seconds=60))  # backoff after one failure: 1 min, ordered
        assert len(w.issuer.calls) == 2
        assert (await w.domain(NAME)).retry.attempt == 2

        checks = w.dns.calls["points"]
        await w.advance(timedelta(seconds=60))  # re-checked, but the backoff is 2 min
        assert w.dns.calls["points"] == checks + 1
        assert len(w.issuer.calls) == 2
        still = await w.domain(NAME)
        assert still.le_state is S.ACTION_REQUIRED and still.action_required

        await w.advance(timedelta(seconds=60))
        assert len(w.issuer.calls) == 3
        done = await w.domain(NAME)
        assert done.le_state is S.IN_USE and done.action_required == ""


async def test_unauthorized_twice_while_dns_points_is_action_required(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        assert w.issuer is not None
        w.issuer.always_fail(NAME, problem("ACME_UNAUTHORIZED", retryable=True))
        await w.add(NAME)
        await w.settled()
        once = await w.domain(NAME)
        assert once.le_state is S.CREATING and once.action_required == ""  # may be a blip
        await w.advance(timedelta(minutes=1))
        twice = await w.domain(NAME)
    assert twice.le_state is S.ACTION_REQUIRED
    assert "/.well-known/acme-challenge/" in twice.action_required
    assert twice.retry.attempt == 2


async def test_retryable_failures_back_off_1_2_4_minutes_and_stay_creating(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        assert w.issuer is not None
        w.issuer.always_fail(NAME, problem("ACME_CONNECTION", retryable=True))
        await w.add(NAME)
        await w.settled()
        for attempt, minutes in ((1, 1), (2, 2), (3, 4), (4, 8)):
            failing = await w.domain(NAME)
            assert failing.retry.attempt == attempt
            assert failing.le_state is S.CREATING
            wait = failing.retry.next_attempt_at - w.clock.now()  # type: ignore[operator]
            assert wait == timedelta(minutes=minutes)
            await w.advance(wait)


async def test_a_rate_limit_pauses_the_named_bucket_until_retry_after(tmp_path: Path) -> None:
    ledger = RecordingLedger()
    async with world(tmp_path, ledger=ledger) as w:
        assert w.issuer is not None
        limited = AcmeProblem(
            "ACME_RATE_LIMITED",
            "too many new orders recently: see "
            "https://letsencrypt.org/docs/rate-limits/#new-orders-per-account",
            retryable=True,
            retry_after=timedelta(hours=2),
        )
        w.issuer.fail(NAME, limited)
        await w.add(NAME)
        await w.settled()
        held = await w.domain(NAME)
        now = w.clock.now()
    assert ledger.paused == [("orders", now + timedelta(hours=2))]
    assert ledger.failed == [(NAME, 0)]
    assert held.retry.next_attempt_at == now + timedelta(hours=2)


async def test_not_configured_waits_for_a_restart_not_a_day(tmp_path: Path) -> None:
    async with world(tmp_path, issuer=False) as w:
        await w.add(NAME)
        await w.settled()
        parked = await w.domain(NAME)
        assert parked.retry.last_error_reason == "NOT_CONFIGURED"
        assert "CERTBROKER_ACME_DIRECTORY" in parked.retry.last_error_message
        assert parked.retry.next_attempt_at is None and parked.next_run_at is None

        await w.advance(timedelta(days=3))
        assert await w.domain(NAME) == parked  # nothing on a timer

        await w.restart()  # still no CA: the restart finds nothing new to do
        assert await w.domain(NAME) == parked

        await w.restart(issuer=FakeIssuer(w.clock))
        assert (await w.domain(NAME)).le_state is S.IN_USE


async def test_a_dns01_domain_is_refused_without_dns01_and_re_evaluated_once_configured(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, dns01=False) as w:
        with pytest.raises(FailedPrecondition) as refused:
            await w.add("*.w.shop.test")
        assert refused.value.reason == "DNS01_NOT_CONFIGURED"
        with pytest.raises(FailedPrecondition):
            await w.add("plain.shop.test", dns01=True)
        assert await w.store.get_domain("*.w.shop.test") is None
        # Opted out of Let's Encrypt, it needs no challenge: accepted.
        await w.add("*.custom.shop.test", disable_letsencrypt=True)

        # A DNS-01 domain from a broker that had DNS-01, restarted without it...
        await w.restart(dns01=FakeDns01())
        added = await w.add("*.w.shop.test")
        await w.scheduler.stop()
        await w.restart(dns01=None)
        parked = await w.domain("*.w.shop.test")
        assert parked.retry.last_error_reason == "NOT_CONFIGURED"
        assert parked.next_run_at is None
        # ...and with it again: re-evaluated at start, the delegation is asked for.
        await w.restart(dns01=FakeDns01())
        asked = await w.domain("*.w.shop.test")
    assert asked.le_state is S.ACTION_REQUIRED
    assert asked.action_required.startswith("_acme-challenge.w.shop.test. CNAME ")
    assert added.delegation_label in asked.action_required


async def test_dns01_asks_for_the_delegation_then_orders_with_its_label(tmp_path: Path) -> None:
    async with world(tmp_path, dns01=True) as w:
        assert w.issuer is not None and w.dns01 is not None
        added = await w.add("*.w.shop.test")
        await w.settled()
        asked = await w.domain("*.w.shop.test")
        assert asked.le_state is S.ACTION_REQUIRED
        assert asked.retry.attempt == 0 and w.issuer.calls == []
        target = f"{added.delegation_label}.{w.dns01.zone}"
        w.dns.cnames["_acme-challenge.w.shop.test"] = target
        await w.advance(timedelta(seconds=60))
        done = await w.domain("*.w.shop.test")
    assert done.le_state is S.IN_USE and done.action_required == ""
    assert [(c.dns01, c.dns01_label) for c in w.issuer.calls] == [(True, added.delegation_label)]


async def test_an_interrupted_order_is_resumed_with_its_url_and_key(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        assert w.issuer is not None
        await w.scheduler.stop()
        await w.add(NAME)
        key = generate_private_key()
        async with w.store.transaction() as tx:
            await tx.put_order(
                PendingOrder(
                    domain=NAME,
                    registered_domain="shop.test",
                    names=(NAME,),
                    key_sealed=w.sealer.seal(key, NAME),
                    started_at=w.clock.now(),
                    order_url="https://fake-ca.test/order/77",
                )
            )
        await w.restart()
        done = await w.domain(NAME)
    assert done.le_state is S.IN_USE
    assert [c.resume_url for c in w.issuer.calls] == ["https://fake-ca.test/order/77"]
    assert w.sealer.opens == 1  # opened once to resume, not sealed again


async def test_renewal_at_two_thirds_without_ari_sends_no_replaces(tmp_path: Path) -> None:
    ledger = RecordingLedger()
    async with world(tmp_path, ledger=ledger) as w:
        assert w.issuer is not None
        await w.add(NAME)
        await w.settled()
        first = await w.domain(NAME)
        assert first.le_cert is not None and first.renewal.next_check is None
        renew_at = lifecycle.renewal_due(first)
        # two thirds of its life, less the per-name spread (priorities.spread_renewal)
        assert renew_at == lifecycle.cert_renewal_time(first.le_cert)
        assert renew_at is not None
        assert renew_at <= first.le_cert.not_before + timedelta(days=60)
        assert renew_at >= first.le_cert.not_before + timedelta(days=52.5)
        await w.until(renew_at - timedelta(seconds=1))
        assert len(w.issuer.calls) == 1
        await w.until(renew_at)
        renewed = await w.domain(NAME)
    assert renewed.le_cert is not None and renewed.le_cert.serial != first.le_cert.serial
    assert [c.replaces for c in w.issuer.calls] == ["", ""]
    assert [(r.renewal, r.replaces) for r in ledger.reserved] == [(False, None), (True, None)]


async def test_ari_renews_inside_the_window_and_sends_replaces(tmp_path: Path) -> None:
    ledger = RecordingLedger()
    async with world(tmp_path, ari=True, ledger=ledger) as w:
        assert w.issuer is not None
        w.pick = 0.25
        start = w.clock.now() + timedelta(days=40)
        w.issuer.window = lambda cert_id: RenewalWindow(
            start, start + timedelta(days=4), timedelta(hours=6)
        )
        await w.add(NAME)
        await w.settled()
        first = await w.domain(NAME)
        assert first.le_cert is not None
        assert len(w.issuer.renewal_info_calls) == 1  # fetched right after issuance
        assert first.renewal.at == start + timedelta(days=1)  # a quarter into the window
        assert lifecycle.renewal_due(first) == start + timedelta(days=1)

        revision = first.revision
        await w.advance(timedelta(hours=6))  # asked again per Retry-After; same window
        again = await w.domain(NAME)
        assert len(w.issuer.renewal_info_calls) == 2
        assert again.renewal.at == first.renewal.at and again.revision == revision  # no event

        moved = start - timedelta(days=30)  # the CA wants it earlier (e.g. a revocation)
        old_id = ari.cert_id(first.le_cert.chain_pem)
        earlier = RenewalWindow(moved, moved + timedelta(hours=1), timedelta(hours=6))
        # (a Retry-After of 0 for the new one: asked again a minute later, not in a loop)
        later = RenewalWindow(start + timedelta(days=60), start + timedelta(days=61), timedelta(0))
        w.issuer.window = lambda cert_id: earlier if cert_id == old_id else later
        await w.advance(timedelta(hours=6))
        planned = (await w.domain(NAME)).renewal.at
        assert planned == moved + timedelta(minutes=15)
        assert planned is not None
        await w.until(planned)
        renewed = await w.domain(NAME)
    assert renewed.le_cert is not None and renewed.le_cert.serial != first.le_cert.serial
    assert [c.replaces for c in w.issuer.calls] == ["", old_id]
    assert ledger.reserved[-1].replaces == old_id and ledger.reserved[-1].renewal


async def test_a_resting_dns01_domain_notices_a_removed_delegation_within_a_day(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, dns01=True) as w:
        assert w.dns01 is not None
        added = await w.add("*.w.shop.test")
        w.dns.cnames["_acme-challenge.w.shop.test"] = f"{added.delegation_label}.{w.dns01.zone}"
        await w.settled()
        assert (await w.domain("*.w.shop.test")).le_state is S.IN_USE
        del w.dns.cnames["_acme-challenge.w.shop.test"]
        await w.advance(lifecycle.DELEGATION_RECHECK)
        noticed = await w.domain("*.w.shop.test")
    assert noticed.le_state is S.IN_USE  # it still serves
    assert noticed.action_required.startswith("_acme-challenge.w.shop.test. CNAME ")


class RecordingLedger(LimitsLedger):
    """The limits ledger, recording what the scheduler told it."""

    def __init__(self) -> None:
        super().__init__()
        self.reserved: list[OrderRequest] = []
        self.failed: list[tuple[str, int]] = []
        self.paused: list[tuple[str, datetime]] = []

    async def reserve(self, tx: Transaction, request: OrderRequest, now: datetime) -> Hold | None:
        self.reserved.append(request)
        return await super().reserve(tx, request, now)

    async def order_failed(
        self,
        tx: Transaction,
        request: OrderRequest,
        failed_authorizations: int,
        now: datetime,
        *,
        identifier: str = "",
    ) -> None:
        self.failed.append((request.domain, failed_authorizations))
        await super().order_failed(tx, request, failed_authorizations, now)

    async def rate_limited(
        self,
        tx: Transaction,
        request: OrderRequest,
        scope: str,
        retry_after: datetime,
        now: datetime,
    ) -> None:
        self.paused.append((scope, retry_after))
        await super().rate_limited(tx, request, scope, retry_after, now)
