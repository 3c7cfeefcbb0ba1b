"""DNS-01 domains in the lifecycle: the delegation is asked for, then checked daily."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from certbroker import lifecycle as lc
from certbroker.model import ChallengeType, Domain, RetryState, Source
from tests.test_lifecycle import DAY, MINUTE, NOW, S, cert, domain


def wildcard(**changes: object) -> Domain:
    return domain(name="*.example.com", challenge=ChallengeType.DNS_01, **changes)


def test_wildcards_and_dns01_choices_use_the_delegation() -> None:
    assert lc.uses_dns01(domain(name="*.example.com"))
    assert lc.uses_dns01(domain(challenge=ChallengeType.DNS_01))
    assert not lc.uses_dns01(domain())


def test_action_required_carries_the_record_and_the_explanation() -> None:
    d = lc.action_required(
        wildcard(), "_acme-challenge.example.com. CNAME x.zone.", NOW, MINUTE,
        reason="DNS01_DELEGATION_MISSING", message="create it",
    )  # fmt: skip
    assert d.le_state is S.ACTION_REQUIRED
    assert d.action_required == "_acme-challenge.example.com. CNAME x.zone."
    assert (d.retry.last_error_reason, d.retry.last_error_message) == (
        "DNS01_DELEGATION_MISSING",
        "create it",
    )
    assert d.retry.attempt == 0
    assert d.next_run_at == NOW + MINUTE


def test_delegated_clears_the_instruction_and_moves_on() -> None:
    asked = lc.action_required(wildcard(), "rec", NOW, MINUTE)
    d = lc.delegated(asked, NOW)
    assert d.action_required == ""
    assert d.le_state is S.CREATING
    assert lc.delegated(wildcard(), NOW).le_state is S.PENDING_DNS


def test_issuance_schedules_a_daily_delegation_check() -> None:
    d = lc.issued(wildcard(le_state=S.CREATING), cert(NOW), NOW)
    assert (d.le_state, d.serving) == (S.IN_USE, Source.LETS_ENCRYPT)
    assert d.retry == RetryState(next_attempt_at=NOW + DAY)
    assert d.next_run_at == NOW + DAY
    assert not lc.is_due_for_delegation_check(d, NOW + DAY - MINUTE)
    assert lc.is_due_for_delegation_check(d, NOW + DAY)
    assert not lc.is_due_for_order(d, NOW + DAY)
    # HTTP-01 domains have no such check
    plain = lc.issued(domain(le_state=S.CREATING), cert(NOW), NOW)
    assert plain.retry == RetryState()
    assert not lc.is_due_for_delegation_check(plain, NOW + DAY)


def test_the_check_never_comes_after_the_renewal() -> None:
    short = cert(NOW, timedelta(hours=12))  # renewal after 7 to 8 hours (the spread)
    renew = lc.cert_renewal_time(short)
    assert NOW + timedelta(hours=7) <= renew <= NOW + timedelta(hours=8)
    d = lc.issued(wildcard(le_state=S.CREATING), short, NOW)
    assert d.retry.next_attempt_at == renew
    later = lc.delegation_confirmed(d, NOW + timedelta(hours=6))
    assert later.retry.next_attempt_at == renew


def test_a_lost_delegation_is_reported_while_the_certificate_serves() -> None:
    served = lc.issued(wildcard(le_state=S.CREATING), cert(NOW), NOW)
    now = NOW + DAY
    lost = lc.action_required(served, "rec", now, MINUTE, reason="DNS01_DELEGATION_MISSING")
    assert (lost.le_state, lost.serving) == (S.IN_USE, Source.LETS_ENCRYPT)
    assert lost.action_required == "rec"
    assert lost.next_run_at == now + MINUTE  # looked at every minute until fixed
    assert lc.is_due_for_delegation_check(lost, now + MINUTE)
    back = lc.delegation_confirmed(lost, now + MINUTE)
    assert back.action_required == ""
    assert back.retry.next_attempt_at == now + MINUTE + DAY
    assert lc.settle(back, now + MINUTE) == back


def test_a_check_that_cannot_tell_asks_again_without_backoff() -> None:
    served = lc.issued(wildcard(le_state=S.CREATING), cert(NOW), NOW)
    d = lc.delegation_check_failed(served, "DNS_TIMEOUT", "no answer", NOW + DAY, MINUTE)
    assert d.retry.attempt == 0
    assert d.retry.next_attempt_at == NOW + DAY + MINUTE
    assert d.le_state is S.IN_USE


def test_renewal_time_still_orders_when_the_check_is_later() -> None:
    served = lc.issued(wildcard(le_state=S.CREATING), cert(NOW), NOW)
    renew_at = lc.cert_renewal_time(served.le_cert)  # type: ignore[arg-type]
    stale = replace(served, retry=replace(served.retry, next_attempt_at=NOW + DAY))
    assert lc.is_due_for_order(stale, renew_at)
    assert not lc.is_due_for_delegation_check(stale, renew_at)
