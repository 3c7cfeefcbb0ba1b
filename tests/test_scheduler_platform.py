"""The platform's own domains through the real scheduler and store, with a fake CA and DNS.

No delegation is looked for, the order's DNS-01 "label" is the challenge name
itself (written in the platform's zone), our update rights are checked before
each order and once a day at rest, and nothing about them turns into an
Action required: there is no customer to act.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from certbroker import lifecycle
from certbroker.acme.problems import AcmeProblem
from certbroker.model import LetsEncryptState, Source
from certbroker.platform import Platform, reconcile
from tests.fakes.dns01 import FakeDns01
from tests.fakes.issuer import problem
from tests.fakes.world import World, world

S = LetsEncryptState
REGION = "*.osc-fr1.example.test"
CHALLENGE = "_acme-challenge.osc-fr1.example.test"


async def configure(w: World) -> None:
    """What the broker's start does (``server._start``), then the scheduler's pass."""
    await reconcile(w.store, w.clock, Platform.from_names([REGION]))
    w.scheduler.wake()
    await w.settled()


async def test_issued_with_no_delegation_and_no_call_then_its_zone_rechecked_daily(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, dns01=True) as w:
        assert w.issuer is not None and w.dns01 is not None
        await configure(w)
        done = await w.domain(REGION)
        assert done.le_state is S.IN_USE and done.serving is Source.LETS_ENCRYPT
        assert done.action_required == "" and done.retry.attempt == 0
        [order] = w.issuer.calls
        assert order.names == (REGION,)
        assert order.dns01 and order.dns01_label == CHALLENGE  # written in place, no label
        assert w.dns01.checked == [CHALLENGE]  # our update rights, before the order
        assert w.dns.calls["cname"] == 0  # no delegation to look for
        assert w.dns.calls["points"] == 0  # nor where it points: DNS-01
        assert w.dns.calls["caa"] == 1

        # at rest, once a day: may the broker still write there? (the renewal needs it)
        assert done.retry.next_attempt_at == w.clock.now() + lifecycle.DELEGATION_RECHECK
        w.dns01.refuse = AcmeProblem("DNS01_UPDATE_REFUSED", "BADSIG", retryable=False)
        await w.advance(lifecycle.DELEGATION_RECHECK)
        refused = await w.domain(REGION)
        assert w.dns01.checked == [CHALLENGE, CHALLENGE]
        assert refused.retry.last_error_reason == "DNS01_UPDATE_REFUSED"
        assert refused.le_state is S.IN_USE  # the certificate still serves
        assert refused.action_required == ""
        assert refused.retry.next_attempt_at == w.clock.now() + timedelta(seconds=60)
        w.dns01.refuse = None
        await w.advance(timedelta(seconds=60))
        fixed = await w.domain(REGION)
        assert fixed.retry.next_attempt_at == w.clock.now() + lifecycle.DELEGATION_RECHECK
        assert len(w.issuer.calls) == 1  # nothing was ordered by the checks


async def test_renewed_at_two_thirds_like_any_certificate(tmp_path: Path) -> None:
    async with world(tmp_path, dns01=True) as w:
        assert w.issuer is not None
        await configure(w)
        first = await w.domain(REGION)
        assert first.le_cert is not None
        await w.until(lifecycle.cert_renewal_time(first.le_cert))
        renewed = await w.domain(REGION)
        assert renewed.le_cert is not None
        assert renewed.le_cert.serial != first.le_cert.serial
        assert [c.dns01_label for c in w.issuer.calls] == [CHALLENGE, CHALLENGE]


async def test_a_ca_refusal_keeps_the_backoff_instead_of_an_action_required(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, dns01=True) as w:
        assert w.issuer is not None
        w.issuer.always_fail(REGION, problem("ACME_REJECTED_IDENTIFIER", retryable=False))
        await configure(w)
        for attempt, minutes in ((1, 1), (2, 2), (3, 4)):
            failing = await w.domain(REGION)
            assert failing.le_state is S.CREATING
            assert failing.action_required == ""  # no customer to ask: the reason says it
            assert failing.retry.last_error_reason == "ACME_REJECTED_IDENTIFIER"
            assert failing.retry.attempt == attempt
            wait = failing.retry.next_attempt_at - w.clock.now()  # type: ignore[operator]
            assert wait == timedelta(minutes=minutes)
            await w.advance(wait)


async def test_the_platforms_zone_alone_does_not_enable_apps_dns01(tmp_path: Path) -> None:
    """Server and key without a delegation zone: the platform's domain issues, an app's
    DNS-01 domain waits for CERTBROKER_DNS01_ZONE (and the API refuses new ones)."""
    async with world(tmp_path, dns01=True) as w:
        await w.restart(dns01=FakeDns01(zone=""))
        await configure(w)
        assert (await w.domain(REGION)).le_state is S.IN_USE
        await w.add("*.customer.test", disable_letsencrypt=True)  # the fakes' broker allows it
        await w.broker.issue_certificate("*.customer.test", "shop")  # Let's Encrypt on: due
        await w.settled()
        held = await w.domain("*.customer.test")
        assert held.retry.last_error_reason == lifecycle.NOT_CONFIGURED
        assert "CERTBROKER_DNS01_ZONE" in held.retry.last_error_message
