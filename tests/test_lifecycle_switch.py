"""``lifecycle.next_action`` and ``lifecycle.apply``: the one switch, with plain values."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from certbroker import lifecycle as lc
from certbroker.dns import CaaReason, CaaResult, DnsReason, DnsResult
from certbroker.model import (
    CertificateInfo,
    ChallengeType,
    DnsObservation,
    Domain,
    LetsEncryptState,
    RenewalPlan,
    RetryState,
)
from tests.fakes import values
from tests.fakes.values import NOW
from tests.fakes.values import settled as domain

MINUTE = timedelta(minutes=1)
S = LetsEncryptState
SETUP = lc.Setup(acme=True, http01=True, dns01=True)


def cert(not_before: datetime, lifetime: timedelta = timedelta(days=90)) -> CertificateInfo:
    """As the broker records a certificate it just received: at its notBefore."""
    return values.cert(not_before, lifetime, received_at=not_before)


def serving(**changes: object) -> Domain:
    return domain(le_cert=cert(NOW - timedelta(days=1)), **changes)


def pointing(points: bool = True) -> lc.DnsChecked:
    reason = DnsReason.OK if points else DnsReason.NOT_POINTING
    return lc.DnsChecked(
        DnsResult("www.example.com", "www.example.com", points, ("A 1.2.3.4",), (), reason, "m")
    )


def caa(allowed: bool, record: str = "", at: str = "example.com") -> lc.CaaChecked:
    reason = CaaReason.OK if allowed else CaaReason.FORBIDS
    fix = "" if allowed else f'{at}. CAA 0 issue "letsencrypt.org"'
    return lc.CaaChecked(CaaResult(allowed, record, at, reason, f"CAA says {allowed}", fix))


def failure(reason: str, *, retryable: bool) -> lc.OrderFailed:
    return lc.OrderFailed(reason, f"the CA says {reason}", retryable)


# --- next_action --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "setup", "pending", "expected"),
    [
        ({}, SETUP, False, lc.CheckDns()),
        ({"challenge": ChallengeType.DNS_01}, SETUP, False, lc.CheckDelegation()),
        ({"name": "*.example.com"}, SETUP, False, lc.CheckDelegation()),
        ({}, SETUP, True, lc.PlaceOrder()),
        ({}, lc.Setup(acme=False), False, lc.HoldNotConfigured("CERTBROKER_ACME_DIRECTORY")),
        ({}, lc.Setup(http01=False), False, lc.HoldNotConfigured("CERTBROKER_PLATFORM_TARGETS")),
    ],
)
def test_next_action_for_a_domain_that_wants_a_certificate(
    changes: dict[str, object], setup: lc.Setup, pending: bool, expected: lc.Action
) -> None:
    assert lc.next_action(domain(**changes), NOW, setup, order_pending=pending) == expected


def test_a_dns01_domain_without_dns01_is_held_for_the_setting() -> None:
    action = lc.next_action(domain(name="*.example.com"), NOW, lc.Setup(), order_pending=False)
    assert isinstance(action, lc.HoldNotConfigured)
    assert action.missing.startswith("CERTBROKER_DNS01_ZONE")


def test_next_action_of_resting_domains() -> None:
    resting = serving()
    assert lc.next_action(resting, NOW, SETUP, order_pending=False) == lc.Rest()
    ari_due = replace(resting, renewal=RenewalPlan(next_check=NOW))
    assert lc.next_action(ari_due, NOW, SETUP, order_pending=False) == lc.FetchRenewalInfo()
    no_ca = lc.Setup(acme=False, dns01=True)
    assert lc.next_action(ari_due, NOW, no_ca, order_pending=False) == lc.Rest()
    wildcard = replace(serving(name="*.example.com"), retry=RetryState(next_attempt_at=NOW))
    assert lc.next_action(wildcard, NOW, SETUP, order_pending=False) == lc.RecheckDelegation()


# --- NOT_CONFIGURED: held until a restart ------------------------------------------------


def test_not_configured_is_held_until_a_restart_and_restarted_makes_it_due() -> None:
    held = lc.apply(domain(), lc.NotConfigured("CERTBROKER_ACME_DIRECTORY"), NOW)
    assert held.retry.last_error_reason == "NOT_CONFIGURED"
    assert "restart" in held.retry.last_error_message
    assert held.retry.next_attempt_at is None and held.next_run_at is None
    assert not lc.is_due_for_order(held, NOW + timedelta(days=30))
    again = lc.apply(held, lc.Restarted(), NOW + MINUTE)
    assert lc.is_due_for_order(again, NOW + MINUTE)
    assert not lc.worth_an_event(held, again)  # a scheduling move only
    other = domain(retry=RetryState(next_attempt_at=NOW + MINUTE, last_error_reason="X"))
    assert lc.apply(other, lc.Restarted(), NOW) == other


def test_a_held_domain_with_a_custom_certificate_still_swaps_at_its_expiry() -> None:
    custom = cert(NOW - timedelta(days=10), timedelta(days=20))
    held = lc.apply(domain(custom_cert=custom), lc.NotConfigured("X"), NOW)
    assert held.next_run_at == custom.not_after  # already flagged expiring: the swap is next


# --- DNS and CAA ---------------------------------------------------------------------------


def test_pending_dns_only_while_dns_does_not_point() -> None:
    assert lc.apply(domain(), pointing(False), NOW).le_state is S.PENDING_DNS
    assert lc.apply(domain(), pointing(True), NOW).le_state is S.CREATING


def test_a_caa_refusal_is_action_required_with_the_record_and_no_failed_attempt() -> None:
    record = 'example.com. CAA 0 issue "other.example"'
    refused = lc.apply(lc.apply(domain(), pointing(), NOW), caa(False, record), NOW)
    assert refused.le_state is S.ACTION_REQUIRED
    assert refused.action_required == 'example.com. CAA 0 issue "letsencrypt.org"'
    assert refused.retry.attempt == 0
    assert refused.retry.next_attempt_at == NOW + timedelta(seconds=60)
    passed = lc.apply(refused, caa(True), NOW + MINUTE)
    assert passed.le_state is S.CREATING and passed.action_required == ""


def test_a_caa_refusal_while_a_certificate_serves_keeps_in_use_and_says_what_to_do() -> None:
    renewing = replace(serving(), renewal=RenewalPlan(at=NOW))
    refused = lc.apply(renewing, caa(False, 'example.com. CAA 0 issue "x"'), NOW)
    assert refused.le_state is S.IN_USE
    assert refused.action_required.startswith("example.com. CAA 0 issue")


def test_a_dns_check_that_fails_again_drops_an_instruction_that_no_longer_applies() -> None:
    refused = lc.apply(domain(), caa(False, 'example.com. CAA 0 issue "x"'), NOW)
    gone = lc.apply(refused, pointing(False), NOW + MINUTE)
    assert gone.le_state is S.PENDING_DNS and gone.action_required == ""


# --- quota holds ---------------------------------------------------------------------------


def test_a_quota_hold_is_creating_with_the_reason_and_the_next_token() -> None:
    until = NOW + timedelta(hours=3)
    held = lc.apply(
        lc.apply(domain(), pointing(), NOW), lc.QuotaHeld("QUOTA_X", "50 in 7 days", until), NOW
    )
    assert held.le_state is S.CREATING
    assert (held.retry.last_error_reason, held.retry.next_attempt_at) == ("QUOTA_X", until)
    assert held.retry.attempt == 0
    renewing = lc.apply(serving(), lc.QuotaHeld("QUOTA_X", "m", until), NOW)
    assert renewing.le_state is S.IN_USE


# --- CA refusals ---------------------------------------------------------------------------


def test_a_terminal_refusal_is_action_required_and_the_ca_waits_for_the_backoff() -> None:
    checked = lc.apply(domain(), pointing(), NOW)
    refused = lc.apply(checked, failure("ACME_REJECTED_IDENTIFIER", retryable=False), NOW)
    assert refused.le_state is S.ACTION_REQUIRED
    assert "www.example.com" in refused.action_required
    assert refused.retry.attempt == 1
    assert refused.retry.next_attempt_at == NOW + timedelta(seconds=60)
    assert lc.ca_ready_at(refused) == NOW + MINUTE  # 1 failure: 1 minute
    twice = lc.apply(refused, failure("ACME_REJECTED_IDENTIFIER", retryable=False), NOW + MINUTE)
    assert lc.ca_ready_at(twice) == NOW + 3 * MINUTE  # 2 failures: 2 minutes
    later = NOW + 2 * MINUTE
    gated = lc.apply(lc.apply(twice, pointing(), later), lc.ChecksPassed(), later)
    assert not lc.is_due_for_order(gated, later)
    assert gated.retry.next_attempt_at == NOW + 3 * MINUTE
    assert not lc.worth_an_event(twice, gated)
    ready = NOW + 3 * MINUTE
    assert lc.is_due_for_order(lc.apply(gated, lc.ChecksPassed(), ready), ready)


def test_a_retryable_failure_after_a_refusal_is_creating_again() -> None:
    refused = lc.apply(domain(), failure("ACME_CAA", retryable=False), NOW)
    assert "CAA" in refused.action_required
    flaky = lc.apply(refused, failure("ACME_NETWORK", retryable=True), NOW + MINUTE)
    assert flaky.le_state is S.CREATING and flaky.action_required == ""


def test_unauthorized_is_final_only_when_repeated_while_dns_points() -> None:
    checked = lc.apply(domain(), pointing(), NOW)
    once = lc.apply(checked, failure("ACME_UNAUTHORIZED", retryable=True), NOW)
    assert once.le_state is S.CREATING and once.retry.attempt == 1
    twice = lc.apply(once, failure("ACME_UNAUTHORIZED", retryable=True), NOW + MINUTE)
    assert twice.le_state is S.ACTION_REQUIRED
    unchecked = replace(once, dns=DnsObservation(points_to_platform=False))
    assert lc.apply(unchecked, failure("ACME_UNAUTHORIZED", retryable=True), NOW).le_state is (
        S.CREATING
    )
    other = lc.apply(once, failure("ACME_CONNECTION", retryable=True), NOW + MINUTE)
    assert other.le_state is S.CREATING


def test_the_brokers_own_dns01_failures_are_the_operators_not_action_required() -> None:
    failed = lc.apply(domain(), failure("DNS01_UPDATE_REFUSED", retryable=False), NOW)
    assert failed.le_state is S.CREATING and failed.action_required == ""
    assert failed.retry.next_attempt_at == NOW + MINUTE


def test_a_refusal_during_renewal_keeps_serving_and_shows_the_fix() -> None:
    refused = lc.apply(serving(), failure("ACME_REJECTED_IDENTIFIER", retryable=False), NOW)
    assert refused.le_state is S.IN_USE and refused.action_required


# --- renewal information (ARI) -------------------------------------------------------------


def test_an_issued_certificate_fetches_its_window_when_the_ca_offers_ari() -> None:
    fresh = cert(NOW)
    with_ari = lc.apply(domain(), lc.CertificateIssued(fresh, ari=True), NOW)
    assert with_ari.renewal == RenewalPlan(next_check=NOW) and with_ari.next_run_at == NOW
    without = lc.apply(domain(), lc.CertificateIssued(fresh, ari=False), NOW)
    assert without.renewal == RenewalPlan()
    # two thirds of its life, less the per-name spread (priorities.spread_renewal)
    assert lc.renewal_due(without) == lc.cert_renewal_time(without.le_cert)  # type: ignore[arg-type]


def test_the_renewal_time_is_picked_in_the_window_and_kept_while_inside_it() -> None:
    issued = lc.apply(domain(), lc.CertificateIssued(cert(NOW), ari=True), NOW)
    start, end = NOW + timedelta(days=50), NOW + timedelta(days=52)
    window = lc.RenewalInfoFetched(start, end, timedelta(hours=6), pick=0.5)
    planned = lc.apply(issued, window, NOW)
    assert planned.renewal == RenewalPlan(start + timedelta(days=1), NOW + timedelta(hours=6))
    assert lc.renewal_due(planned) == start + timedelta(days=1)
    later = NOW + timedelta(hours=6)
    same = lc.apply(planned, replace(window, pick=0.9), later)  # another draw, same window
    assert same.renewal.at == planned.renewal.at
    assert not lc.worth_an_event(planned, same)
    moved = lc.apply(planned, lc.RenewalInfoFetched(end, end + MINUTE, MINUTE, 0.0), later)
    assert moved.renewal.at == end and lc.worth_an_event(planned, moved)
    assert not lc.needs_issuance(moved, end - MINUTE) and lc.needs_issuance(moved, end)


def test_a_window_for_right_now_is_not_taken_for_a_certificate_just_received() -> None:
    issued = lc.apply(domain(), lc.CertificateIssued(cert(NOW), ari=True), NOW)
    past = lc.RenewalInfoFetched(NOW - MINUTE, NOW, timedelta(hours=6), 0.0)
    assert lc.apply(issued, past, NOW).renewal.at == NOW + lc.ARI_MIN_AGE


def test_without_a_window_the_renewal_falls_back_to_two_thirds() -> None:
    issued = lc.apply(domain(), lc.CertificateIssued(cert(NOW), ari=True), NOW)
    none = lc.apply(issued, lc.RenewalInfoUnavailable(offered=False), NOW)
    assert none.renewal == RenewalPlan()
    assert lc.renewal_due(none) == lc.cert_renewal_time(none.le_cert)  # type: ignore[arg-type]
    failing = lc.apply(issued, lc.RenewalInfoUnavailable(offered=True, message="503"), NOW)
    assert failing.renewal.next_check == NOW + lc.RENEWAL_INFO_RETRY


def test_no_window_is_fetched_for_an_expired_certificate() -> None:
    old = cert(NOW - timedelta(days=100))
    expired = replace(serving(), le_cert=old, renewal=RenewalPlan(next_check=NOW))
    assert not lc.is_due_for_renewal_info(expired, NOW)
