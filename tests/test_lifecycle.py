"""The pure state machine, with hand-built values: the seed's rules, one transition each."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certbroker import lifecycle as lc
from certbroker.model import (
    CertificateInfo,
    DnsObservation,
    Domain,
    LetsEncryptState,
    RetryState,
    Source,
)
from certbroker.priorities import spread_renewal, spread_window
from certbroker.store.codec import DOMAIN_COLUMNS, SCHEDULE_COLUMNS, domain_to_row
from tests.fakes.values import DAY, NOW, cert, domain

MINUTE = timedelta(minutes=1)

S = LetsEncryptState


def fresh_le() -> CertificateInfo:
    """Issued yesterday, 90 days: renewal between days 52.5 and 60 (the per-name spread)."""
    return cert(NOW - DAY)


def serving_le(**changes: object) -> Domain:
    return lc.settle(domain(le_cert=fresh_le(), **changes), NOW)


# --- settle -------------------------------------------------------------------------------


def test_settle_valid_custom_serves_and_le_is_not_used() -> None:
    d = lc.settle(domain(le_cert=fresh_le(), custom_cert=cert(NOW - DAY, 365 * DAY)), NOW)
    assert (d.serving, d.le_state) == (Source.CUSTOM, S.NOT_USED)


def test_settle_valid_le_serves_and_is_in_use() -> None:
    d = lc.settle(domain(le_state=S.CREATING, le_cert=fresh_le()), NOW)
    assert (d.serving, d.le_state) == (Source.LETS_ENCRYPT, S.IN_USE)


@pytest.mark.parametrize("le_cert", [None, "valid"])
def test_settle_opted_out_is_disabled(le_cert: str | None) -> None:
    d = lc.settle(
        domain(
            letsencrypt_enabled=False, le_state=S.IN_USE, le_cert=fresh_le() if le_cert else None
        ),
        NOW,
    )
    assert d.le_state is S.DISABLED


def test_settle_opted_out_with_custom_is_disabled_and_custom_serves() -> None:
    d = lc.settle(domain(letsencrypt_enabled=False, custom_cert=cert(NOW - DAY, 30 * DAY)), NOW)
    assert (d.serving, d.le_state) == (Source.CUSTOM, S.DISABLED)


@pytest.mark.parametrize("resting", [S.IN_USE, S.NOT_USED, S.DISABLED])
def test_settle_nothing_serving_from_a_resting_state_is_pending_dns(resting: S) -> None:
    expired = cert(NOW - 100 * DAY)
    d = lc.settle(domain(le_state=resting, serving=Source.LETS_ENCRYPT, le_cert=expired), NOW)
    assert (d.serving, d.le_state) == (Source.NONE, S.PENDING_DNS)


@pytest.mark.parametrize("transient", [S.PENDING_DNS, S.CREATING, S.ACTION_REQUIRED])
def test_settle_keeps_a_transient_state_when_nothing_serves(transient: S) -> None:
    assert lc.settle(domain(le_state=transient), NOW).le_state is transient


def test_settle_stamps_updated_at() -> None:
    assert lc.settle(domain(), NOW).updated_at == NOW


def test_a_certificate_is_not_valid_before_not_before_nor_at_not_after() -> None:
    c = cert(NOW, 10 * DAY)
    # a fresh certificate a moment ahead of our clock counts (the CA's clock may lead ours)
    assert lc.is_valid_at(c, NOW - lc.CLOCK_SKEW)
    assert not lc.is_valid_at(c, NOW - lc.CLOCK_SKEW - timedelta(microseconds=1))
    assert lc.is_valid_at(c, NOW)
    assert lc.is_valid_at(c, c.not_after - timedelta(microseconds=1))
    assert not lc.is_valid_at(c, c.not_after)
    assert not lc.is_valid_at(None, NOW)


# --- next_run -----------------------------------------------------------------------------


def test_next_run_custom_expiry_when_it_is_earliest() -> None:
    custom = cert(NOW - 80 * DAY, 85 * DAY)  # expires in 5 days, already flagged
    d = lc.settle(domain(le_cert=fresh_le(), custom_cert=custom), NOW)
    assert d.custom_expiring
    assert d.next_run_at == custom.not_after


def test_next_run_custom_expiry_minus_14_days_until_flagged() -> None:
    custom = cert(NOW - DAY, 31 * DAY)  # expires in 30 days: flag in 16
    d = lc.settle(domain(le_cert=fresh_le(), custom_cert=custom), NOW)
    assert not d.custom_expiring
    assert d.next_run_at == custom.not_after - timedelta(days=14)


def test_next_run_le_not_after_when_opted_out() -> None:
    le = fresh_le()
    d = lc.settle(domain(letsencrypt_enabled=False, le_cert=le), NOW)
    assert d.next_run_at == le.not_after


def test_next_run_renewal_time_of_a_valid_le_cert() -> None:
    le = fresh_le()
    d = serving_le()
    # two thirds of its life, less the per-name spread (priorities.spread_renewal)
    assert d.next_run_at == spread_renewal("www.example.com", le.not_before, le.not_after)
    assert d.next_run_at == lc.cert_renewal_time(d.le_cert)  # type: ignore[arg-type]
    earliest, latest = spread_window(le.not_before, le.not_after)
    assert earliest <= d.next_run_at <= latest == le.not_before + timedelta(days=60)


def test_next_run_next_attempt_when_an_order_is_wanted() -> None:
    d = lc.settle(domain(retry=RetryState(attempt=2, next_attempt_at=NOW + 3 * MINUTE)), NOW)
    assert d.next_run_at == NOW + 3 * MINUTE


def test_next_run_is_now_when_an_order_is_wanted_and_no_attempt_is_planned() -> None:
    assert lc.settle(domain(), NOW).next_run_at == NOW


def test_next_run_never_before_now() -> None:
    d = lc.settle(domain(retry=RetryState(next_attempt_at=NOW - DAY)), NOW)
    assert d.next_run_at == NOW


def test_next_run_picks_the_le_expiry_over_a_later_attempt() -> None:
    le = cert(NOW - 89 * DAY)  # expires in a day, renewal failing with a long wait
    d = lc.settle(
        domain(le_cert=le, retry=RetryState(attempt=12, next_attempt_at=NOW + 2 * DAY)), NOW
    )
    assert d.next_run_at == le.not_after


def test_next_run_none_when_nothing_will_change() -> None:
    assert lc.settle(domain(letsencrypt_enabled=False), NOW).next_run_at is None


# --- needs_issuance / is_due_for_order ----------------------------------------------------


def test_needs_issuance() -> None:
    le = fresh_le()
    renew_at = lc.cert_renewal_time(le)
    assert lc.needs_issuance(domain(), NOW)
    assert not lc.needs_issuance(domain(le_cert=le), NOW)
    assert not lc.needs_issuance(domain(le_cert=le), renew_at - timedelta(microseconds=1))
    assert lc.needs_issuance(domain(le_cert=le), renew_at)
    assert lc.needs_issuance(domain(le_cert=le), le.not_after)
    assert not lc.needs_issuance(domain(letsencrypt_enabled=False), NOW)


def test_is_due_for_order() -> None:
    assert lc.is_due_for_order(domain(), NOW)
    later = domain(retry=RetryState(attempt=1, next_attempt_at=NOW + MINUTE))
    assert not lc.is_due_for_order(later, NOW)
    assert lc.is_due_for_order(later, NOW + MINUTE)
    assert not lc.is_due_for_order(domain(le_cert=fresh_le()), NOW)
    assert not lc.is_due_for_order(domain(letsencrypt_enabled=False), NOW)


# --- dns_not_ready ------------------------------------------------------------------------

OBS = DnsObservation(answered=("198.51.100.9",), expected=("192.0.2.1",), checked_at=NOW)


def test_dns_not_ready_checks_again_after_the_interval_without_backing_off() -> None:
    start = domain(le_state=S.CREATING, retry=RetryState(attempt=3, next_attempt_at=NOW))
    d = lc.dns_not_ready(
        start, OBS, "DNS_NOT_POINTING", "points elsewhere", NOW, timedelta(seconds=60)
    )
    assert d.retry.attempt == 3
    assert d.retry.next_attempt_at == NOW + timedelta(seconds=60)
    assert d.next_run_at == NOW + timedelta(seconds=60)
    assert d.le_state is S.PENDING_DNS
    assert d.dns == OBS
    assert (d.retry.last_error_reason, d.retry.last_error_message) == (
        "DNS_NOT_POINTING",
        "points elsewhere",
    )
    assert d.retry.last_error_at == NOW


def test_dns_not_ready_repeated_keeps_a_steady_cadence() -> None:
    d = domain()
    for n in range(5):
        now = NOW + n * MINUTE
        d = lc.dns_not_ready(d, OBS, "DNS", "", now, MINUTE)
        assert d.retry.attempt == 0
        assert d.next_run_at == now + MINUTE


def test_dns_not_ready_during_renewal_keeps_in_use() -> None:
    d = lc.dns_not_ready(serving_le(), OBS, "DNS", "", NOW, MINUTE)
    assert (d.serving, d.le_state) == (Source.LETS_ENCRYPT, S.IN_USE)


# --- failed -------------------------------------------------------------------------------


def test_failed_increments_attempt_and_backs_off_1_2_4_minutes() -> None:
    d = domain()
    waits = []
    now = NOW
    for _ in range(5):
        d = lc.failed(d, "CA_ERROR", "boom", now)
        waits.append(d.retry.next_attempt_at - now)  # type: ignore[operator]
        assert d.next_run_at == d.retry.next_attempt_at
        now = d.retry.next_attempt_at  # type: ignore[assignment]
    assert d.retry.attempt == 5
    assert waits == [MINUTE, 2 * MINUTE, 4 * MINUTE, 8 * MINUTE, 16 * MINUTE]
    assert d.le_state is S.CREATING
    assert (d.retry.last_error_reason, d.retry.last_error_message) == ("CA_ERROR", "boom")


def test_failed_is_capped_at_one_try_a_day() -> None:
    d = lc.failed(domain(retry=RetryState(attempt=11)), "X", "", NOW)
    assert d.retry.attempt == 12
    assert d.retry.next_attempt_at == NOW + DAY
    d = lc.failed(d, "X", "", NOW + DAY)
    assert d.retry.next_attempt_at == NOW + 2 * DAY


def test_failed_honours_a_longer_retry_after() -> None:
    d = lc.failed(domain(), "RATE_LIMITED", "", NOW, retry_after=timedelta(hours=3))
    assert d.retry.attempt == 1
    assert d.retry.next_attempt_at == NOW + timedelta(hours=3)


def test_failed_ignores_a_shorter_retry_after() -> None:
    d = lc.failed(
        domain(retry=RetryState(attempt=2)), "X", "", NOW, retry_after=timedelta(seconds=5)
    )
    assert d.retry.next_attempt_at == NOW + 4 * MINUTE


def test_failed_with_an_explicit_state() -> None:
    d = lc.failed(domain(), "X", "", NOW, state=S.ACTION_REQUIRED)
    assert d.le_state is S.ACTION_REQUIRED


def test_a_renewal_failure_keeps_in_use_while_the_old_cert_serves() -> None:
    le = cert(NOW - 61 * DAY)  # past renewal time, valid for 29 more days
    d = lc.settle(domain(le_cert=le), NOW)
    assert d.le_state is S.IN_USE
    d = lc.failed(d, "CA_ERROR", "boom", NOW)
    assert (d.serving, d.le_state) == (Source.LETS_ENCRYPT, S.IN_USE)
    assert d.retry.attempt == 1
    assert d.next_run_at == NOW + MINUTE


def test_a_renewal_failure_with_an_explicit_state_still_reports_in_use() -> None:
    d = lc.failed(
        lc.settle(domain(le_cert=cert(NOW - 61 * DAY)), NOW), "X", "", NOW, state=S.CREATING
    )
    assert d.le_state is S.IN_USE


# --- held_back ----------------------------------------------------------------------------


def test_held_back_waits_for_the_quota_without_counting_a_failure() -> None:
    until = NOW + timedelta(days=3)
    start = domain(le_state=S.CREATING, retry=RetryState(attempt=2))
    d = lc.held_back(start, "RATE_LIMITED", "50 certificates", until, NOW)
    assert d.retry.attempt == 2
    assert d.retry.next_attempt_at == until
    assert d.next_run_at == until
    assert d.retry.last_error_reason == "RATE_LIMITED"
    assert d.le_state is S.CREATING


# --- issued -------------------------------------------------------------------------------


def test_issued_resets_the_backoff_and_serves_le() -> None:
    start = domain(
        le_state=S.CREATING,
        action_required="x",
        retry=RetryState(attempt=6, next_attempt_at=NOW, last_error_reason="X"),
    )
    new = cert(NOW)
    d = lc.issued(start, new, NOW)
    assert d.retry == RetryState()
    assert d.le_cert == new
    assert (d.serving, d.le_state) == (Source.LETS_ENCRYPT, S.IN_USE)
    assert d.action_required == ""
    assert d.next_run_at == lc.cert_renewal_time(new)
    assert NOW + timedelta(days=52.5) <= d.next_run_at <= NOW + timedelta(days=60)


def test_issued_while_custom_serves_is_not_used() -> None:
    custom = cert(NOW - DAY, 365 * DAY)
    d = lc.issued(lc.settle(domain(custom_cert=custom), NOW), cert(NOW), NOW)
    assert (d.serving, d.le_state) == (Source.CUSTOM, S.NOT_USED)


def test_order_started_is_creating_unless_le_serves() -> None:
    assert lc.order_started(domain(), NOW).le_state is S.CREATING
    assert lc.order_started(serving_le(), NOW).le_state is S.IN_USE


def test_action_required_is_reported_and_rechecked() -> None:
    d = lc.action_required(domain(retry=RetryState(attempt=2)), "add CNAME", NOW, 5 * MINUTE)
    assert d.le_state is S.ACTION_REQUIRED
    assert d.action_required == "add CNAME"
    assert d.retry.attempt == 2
    assert d.next_run_at == NOW + 5 * MINUTE


# --- custom certificates ------------------------------------------------------------------


def test_custom_installed_serves_and_le_is_not_used() -> None:
    custom = cert(NOW - DAY, 365 * DAY)
    d = lc.custom_installed(serving_le(), custom, NOW)
    assert d.custom_cert == custom
    assert (d.serving, d.le_state) == (Source.CUSTOM, S.NOT_USED)


def test_custom_removed_falls_back_to_le_at_once() -> None:
    custom = cert(NOW - DAY, 365 * DAY)
    d = lc.custom_installed(serving_le(), custom, NOW)
    d = lc.custom_removed(d, NOW)
    assert d.custom_cert is None
    assert (d.serving, d.le_state) == (Source.LETS_ENCRYPT, S.IN_USE)


def test_custom_removed_without_le_orders_now() -> None:
    custom = cert(NOW - DAY, 365 * DAY)
    start = lc.custom_installed(
        domain(retry=RetryState(attempt=9, next_attempt_at=NOW + 10 * DAY)), custom, NOW
    )
    d = lc.custom_removed(start, NOW)
    assert d.serving is Source.NONE
    assert d.le_state is S.PENDING_DNS
    assert d.retry.next_attempt_at == NOW
    assert d.next_run_at == NOW
    assert lc.is_due_for_order(d, NOW)


def test_custom_removed_while_backing_off_is_a_rationed_forced_retry() -> None:
    custom = cert(NOW - DAY, 365 * DAY)
    failing = lc.failed(domain(), "ACME_X", "", NOW)
    first = lc.custom_removed(lc.custom_installed(failing, custom, NOW), NOW, 10 * MINUTE)
    assert first.retry.next_attempt_at == NOW
    assert first.retry.forced_at == NOW
    failed_again = lc.failed(first, "ACME_X", "", NOW)
    second = lc.custom_removed(lc.custom_installed(failed_again, custom, NOW), NOW, 10 * MINUTE)
    assert second.retry.next_attempt_at == NOW + 2 * MINUTE  # the backoff stands
    assert not lc.is_due_for_order(second, NOW)


def test_custom_removed_when_opted_out_is_disabled_and_orders_nothing() -> None:
    start = lc.custom_installed(domain(letsencrypt_enabled=False), cert(NOW - DAY, 9 * DAY), NOW)
    d = lc.custom_removed(start, NOW)
    assert (d.serving, d.le_state) == (Source.NONE, S.DISABLED)
    assert d.retry.next_attempt_at is None
    assert d.next_run_at is None


def test_tick_at_custom_expiry_swaps_to_le_in_the_same_transition() -> None:
    custom = cert(NOW - 300 * DAY, 301 * DAY)  # expires in one day
    le = fresh_le()
    d = lc.settle(domain(le_cert=le, custom_cert=custom), NOW)
    assert d.serving is Source.CUSTOM
    assert d.next_run_at == custom.not_after
    just_before = lc.tick(d, custom.not_after - timedelta(microseconds=1))
    assert just_before.serving is Source.CUSTOM
    after = lc.tick(d, custom.not_after)
    assert (after.serving, after.le_state) == (Source.LETS_ENCRYPT, S.IN_USE)


def test_tick_at_custom_expiry_without_le_orders_now() -> None:
    custom = cert(NOW - 300 * DAY, 301 * DAY)
    d = lc.settle(
        domain(custom_cert=custom, retry=RetryState(attempt=12, next_attempt_at=NOW + 20 * DAY)),
        NOW,
    )
    assert d.le_state is S.NOT_USED
    after = lc.tick(d, custom.not_after)
    assert after.serving is Source.NONE
    assert after.le_state is S.PENDING_DNS
    assert after.retry.next_attempt_at == custom.not_after
    assert after.retry.attempt == 12
    assert after.next_run_at == custom.not_after


def test_tick_before_anything_is_due_changes_nothing_worth_writing() -> None:
    d = serving_le()
    assert not lc.changed(d, lc.tick(d, NOW + DAY))


def test_custom_expiring_flips_exactly_14_days_before_not_after() -> None:
    custom = cert(NOW - DAY, 50 * DAY)  # ends before the Let's Encrypt one's renewal
    flip = custom.not_after - timedelta(days=14)
    d = lc.settle(domain(le_cert=fresh_le(), custom_cert=custom), NOW)
    assert not d.custom_expiring
    assert d.next_run_at == flip
    assert not lc.tick(d, flip - timedelta(microseconds=1)).custom_expiring
    flagged = lc.tick(d, flip)
    assert flagged.custom_expiring
    assert flagged.next_run_at == custom.not_after
    assert lc.changed(d, flagged)


def test_a_new_custom_cert_clears_the_expiring_flag() -> None:
    old = cert(NOW - 300 * DAY, 305 * DAY)
    d = lc.settle(domain(custom_cert=old), NOW)
    assert d.custom_expiring
    d = lc.custom_installed(d, cert(NOW, 365 * DAY), NOW)
    assert not d.custom_expiring


# --- retry_now / set_letsencrypt / changed ------------------------------------------------


def test_retry_now_runs_at_once_without_touching_the_attempt_count() -> None:
    start = lc.failed(domain(retry=RetryState(attempt=7)), "X", "msg", NOW)
    assert start.retry.next_attempt_at == NOW + 128 * MINUTE
    later = NOW + MINUTE
    d = lc.retry_now(start, later)
    assert d.retry.attempt == 8
    assert d.retry.next_attempt_at == later
    assert d.next_run_at == later
    assert d.retry.last_error_reason == "X"


def test_retry_now_of_a_failing_domain_records_the_forced_retry() -> None:
    start = lc.failed(domain(), "ACME_X", "", NOW)
    assert lc.backing_off(start, NOW)
    assert lc.forced_retry_wait(start, NOW, 10 * MINUTE) is None
    forced = lc.retry_now(start, NOW + MINUTE / 2)
    assert forced.retry.forced_at == NOW + MINUTE / 2
    assert lc.is_due_for_order(forced, NOW + MINUTE / 2)
    again = lc.failed(forced, "ACME_X", "", NOW + MINUTE)
    assert again.retry.forced_at == NOW + MINUTE / 2  # failing again refills nothing
    assert lc.forced_retry_wait(again, NOW + MINUTE, 10 * MINUTE) == 9.5 * MINUTE
    assert lc.forced_retry_wait(again, NOW + 10.5 * MINUTE, 10 * MINUTE) is None


def test_retry_now_before_any_failure_is_free() -> None:
    """DNS cadence, quota holds and missing settings are re-checked locally: never rationed."""
    pending = lc.dns_not_ready(domain(), OBS, "DNS_NOT_POINTING", "", NOW, MINUTE)
    held = lc.held_back(domain(), "QUOTA_NAME_SET", "", NOW + 7 * DAY, NOW)
    for d in (pending, held):
        assert not lc.backing_off(d, NOW)
        forced = lc.retry_now(d, NOW)
        assert forced.retry.forced_at is None
        assert lc.forced_retry_wait(lc.retry_now(forced, NOW), NOW, 10 * MINUTE) is None


def test_a_due_domain_is_not_backing_off_and_retry_now_spends_nothing() -> None:
    start = lc.failed(domain(retry=RetryState(forced_at=NOW)), "ACME_X", "", NOW)
    due = start.retry.next_attempt_at
    assert due is not None
    assert lc.forced_retry_wait(start, due, 10 * MINUTE) is None
    assert not lc.changed(start, lc.retry_now(start, due))


def test_issued_keeps_the_forced_time_for_renewals_only() -> None:
    """Success ends the backoff (no forced-retry wait) but a forced renewal stays rationed."""
    start = lc.retry_now(lc.failed(domain(), "ACME_X", "", NOW), NOW)
    assert start.retry.forced_at == NOW
    done = lc.issued(start, fresh_le(), NOW + MINUTE)
    assert done.retry.attempt == 0 and done.retry.forced_at == NOW
    assert lc.forced_retry_wait(done, NOW + MINUTE, 10 * MINUTE) is None
    assert lc.forced_renewal_wait(done, NOW + MINUTE, 10 * MINUTE) == 9 * MINUTE
    assert lc.forced_renewal_wait(done, NOW + 10 * MINUTE, 10 * MINUTE) is None


def test_renew_now_makes_the_renewal_due_while_the_certificate_serves() -> None:
    start = serving_le()
    assert not lc.needs_issuance(start, NOW)
    d = lc.renew_now(start, NOW)
    assert lc.needs_issuance(d, NOW) and lc.is_due_for_order(d, NOW)
    assert lc.renewal_due(d) == NOW and d.next_run_at == NOW
    assert d.serving is Source.LETS_ENCRYPT and d.le_cert == start.le_cert
    assert d.retry.forced_at == NOW and d.retry.attempt == 0
    assert lc.worth_an_event(start, d)  # watchers see the renewal time move


def test_retry_now_without_need_changes_no_retry_fact() -> None:
    start = serving_le()
    d = lc.retry_now(start, NOW)
    assert d.retry == start.retry
    assert not lc.changed(start, d)


def test_set_letsencrypt_off_then_on() -> None:
    start = lc.failed(domain(), "X", "", NOW)
    off = lc.set_letsencrypt(start, False, NOW)
    assert not off.letsencrypt_enabled
    assert off.le_state is S.DISABLED
    assert off.retry == start.retry  # the backoff is remembered, not reset
    assert off.next_run_at is None
    on = lc.set_letsencrypt(off, True, NOW + MINUTE)
    assert on.letsencrypt_enabled
    assert on.le_state is S.PENDING_DNS
    assert on.next_run_at == NOW + MINUTE
    assert lc.is_due_for_order(on, NOW + MINUTE)


def test_set_letsencrypt_off_and_on_again_is_no_way_around_the_backoff() -> None:
    start = lc.failed(domain(retry=RetryState(attempt=5)), "ACME_X", "", NOW)
    assert start.retry.next_attempt_at == NOW + 32 * MINUTE
    on = lc.set_letsencrypt(lc.set_letsencrypt(start, False, NOW), True, NOW)
    assert on.retry.attempt == 6
    assert on.retry.next_attempt_at == NOW + 32 * MINUTE
    assert not lc.is_due_for_order(on, NOW + MINUTE)
    assert lc.backing_off(on, NOW)


def test_set_letsencrypt_on_with_a_valid_le_cert_is_in_use() -> None:
    off = lc.set_letsencrypt(serving_le(), False, NOW)
    assert off.le_state is S.DISABLED
    assert lc.set_letsencrypt(off, True, NOW).le_state is S.IN_USE


def test_set_letsencrypt_to_the_same_value_is_a_no_op() -> None:
    d = serving_le()
    assert lc.set_letsencrypt(d, True, NOW + DAY) is d


def test_changed_ignores_only_updated_at() -> None:
    d = serving_le()
    assert not lc.changed(d, replace(d, updated_at=NOW + DAY))
    assert lc.changed(d, replace(d, next_run_at=NOW + DAY))
    assert lc.changed(d, replace(d, revision=d.revision + 1))
    assert lc.changed(d, replace(d, retry=replace(d.retry, last_error_message="x")))
    assert lc.changed(d, replace(d, updated_at=NOW + DAY, custom_expiring=True))


def test_a_failed_transition_is_worth_writing() -> None:
    d = domain()
    assert lc.changed(d, lc.failed(d, "X", "", NOW))
    assert lc.worth_an_event(d, lc.failed(d, "X", "", NOW))


def test_a_dns_recheck_that_finds_the_same_is_no_event() -> None:
    seen = replace(OBS, answered=("A 198.51.100.9", "A 198.51.100.10"))
    first = lc.dns_not_ready(domain(), seen, "DNS_NOT_POINTING", "m", NOW, MINUTE)
    assert lc.worth_an_event(domain(), first)
    later = NOW + MINUTE
    shuffled = replace(seen, answered=tuple(reversed(seen.answered)), checked_at=later)
    second = lc.dns_not_ready(first, shuffled, "DNS_NOT_POINTING", "m", later, MINUTE)
    assert lc.changed(first, second)  # the next check time must still be written
    assert not lc.worth_an_event(first, second)
    moved = replace(OBS, answered=("A 198.51.100.7",), checked_at=later)
    third = lc.dns_not_ready(first, moved, "DNS_NOT_POINTING", "m", later, MINUTE)
    assert lc.worth_an_event(first, third)
    other_reason = lc.dns_not_ready(first, OBS, "DNS_NXDOMAIN", "m", later, MINUTE)
    assert lc.worth_an_event(first, other_reason)


def test_scheduling_moves_are_no_event() -> None:
    d = serving_le()
    assert not lc.worth_an_event(d, replace(d, next_run_at=NOW + DAY, updated_at=NOW + DAY))
    failing = lc.failed(domain(), "X", "", NOW)
    assert not lc.worth_an_event(failing, lc.retry_now(failing, NOW))
    for shown in (
        replace(d, le_state=S.CREATING),
        replace(d, action_required="create the record"),
        replace(d, retry=replace(d.retry, attempt=3)),
        replace(d, retry=replace(d.retry, last_error_message="x")),
        replace(d, custom_expiring=True),
        replace(d, le_cert=fresh_le()),
    ):
        assert lc.worth_an_event(d, shown)


# --- property: any sequence of transitions --------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("tick")),
    st.tuples(st.just("settle")),
    st.tuples(st.just("dns_not_ready"), st.integers(1, 600)),
    st.tuples(st.just("failed"), st.none() | st.integers(0, 10 * 86400)),
    st.tuples(st.just("held_back"), st.integers(-3600, 8 * 86400)),
    st.tuples(st.just("action_required"), st.integers(1, 3600)),
    st.tuples(st.just("order_started")),
    st.tuples(st.just("issued"), st.integers(-3600, 0), st.sampled_from([45, 90])),
    st.tuples(st.just("retry_now")),
    st.tuples(st.just("custom_installed"), st.integers(-400, 10), st.integers(1, 400)),
    st.tuples(st.just("custom_removed")),
    st.tuples(st.just("set_letsencrypt"), st.booleans()),
)
_steps = st.lists(st.tuples(st.integers(0, 40 * 86400), _op), max_size=25)


def _apply(d: Domain, op: tuple[object, ...], now: datetime) -> Domain:
    kind = op[0]
    if kind == "tick":
        return lc.tick(d, now)
    if kind == "settle":
        return lc.settle(d, now)
    if kind == "dns_not_ready":
        return lc.dns_not_ready(d, OBS, "DNS", "", now, timedelta(seconds=op[1]))  # type: ignore[arg-type]
    if kind == "failed":
        after = None if op[1] is None else timedelta(seconds=op[1])  # type: ignore[arg-type]
        return lc.failed(d, "X", "", now, retry_after=after)
    if kind == "held_back":
        return lc.held_back(d, "Q", "", now + timedelta(seconds=op[1]), now)  # type: ignore[arg-type]
    if kind == "action_required":
        return lc.action_required(d, "do it", now, timedelta(seconds=op[1]))  # type: ignore[arg-type]
    if kind == "order_started":
        return lc.order_started(d, now)
    if kind == "issued":
        new = cert(now + timedelta(seconds=op[1]), timedelta(days=op[2]))  # type: ignore[arg-type]
        return lc.issued(d, new, now)
    if kind == "retry_now":
        return lc.retry_now(d, now)
    if kind == "custom_installed":
        new = cert(now + timedelta(days=op[1]), timedelta(days=op[2]))  # type: ignore[arg-type]
        return lc.custom_installed(d, new, now)
    if kind == "custom_removed":
        return lc.custom_removed(d, now)
    assert kind == "set_letsencrypt"
    return lc.set_letsencrypt(d, op[1], now)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(enabled=st.booleans(), steps=_steps)
def test_any_sequence_stays_settled_and_never_schedules_the_past(
    enabled: bool, steps: list[tuple[int, tuple[object, ...]]]
) -> None:
    now = NOW
    d = lc.settle(domain(letsencrypt_enabled=enabled), now)
    for advance, op in steps:
        now += timedelta(seconds=advance)
        before = d
        d = _apply(d, op, now)
        if d is before:  # set_letsencrypt to the value it already has
            continue
        assert lc.settle(d, now) == d, f"{op[0]} left an unsettled domain"
        assert lc.settle(lc.settle(d, now), now) == lc.settle(d, now)
        assert d.next_run_at is None or d.next_run_at >= now
        nxt = lc.next_run(d, now)
        assert nxt is None or nxt >= now
        # what serves follows validity; the status follows what serves
        if lc.is_valid_at(d.custom_cert, now):
            assert d.serving is Source.CUSTOM
        elif lc.is_valid_at(d.le_cert, now):
            assert d.serving is Source.LETS_ENCRYPT
        else:
            assert d.serving is Source.NONE
        if not d.letsencrypt_enabled:
            assert d.le_state is S.DISABLED
        elif d.serving is Source.CUSTOM:
            assert d.le_state is S.NOT_USED
        elif d.serving is Source.LETS_ENCRYPT:
            assert d.le_state is S.IN_USE
        else:
            assert d.le_state in (S.PENDING_DNS, S.CREATING, S.ACTION_REQUIRED)
        # a wanted order is always scheduled
        if lc.needs_issuance(d, now):
            assert d.next_run_at is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(enabled=st.booleans(), steps=_steps)
def test_a_change_without_an_event_moves_only_the_scheduling_columns(
    enabled: bool, steps: list[tuple[int, tuple[object, ...]]]
) -> None:
    """What ``put_schedule`` writes is all that differs when no event is due."""
    now = NOW
    d = lc.settle(domain(letsencrypt_enabled=enabled), now)
    for advance, op in steps:
        now += timedelta(seconds=advance)
        before, d = d, _apply(d, op, now)
        if lc.changed(before, d) and not lc.worth_an_event(before, d):
            old, new = domain_to_row(before), domain_to_row(d)
            moved = {c for c in DOMAIN_COLUMNS if old[c] != new[c]} - {"updated_at"}
            assert moved <= set(SCHEDULE_COLUMNS), (op[0], moved)


def test_renewal_counts_from_receipt_when_our_clock_is_ahead_of_the_ca() -> None:
    """A CA clock behind ours must not make a fresh certificate look due at once."""
    c = cert(NOW, 90 * DAY)
    name = ",".join(sorted(c.sans))
    assert lc.cert_renewal_time(c) == spread_renewal(name, NOW, NOW + 90 * DAY)
    late = replace(c, received_at=NOW + 60 * DAY)  # our clock is 60 days ahead
    renew = lc.cert_renewal_time(late)
    # two thirds (less the spread) of the 30 days left then
    assert renew == spread_renewal(name, NOW + 60 * DAY, NOW + 90 * DAY)
    assert NOW + 60 * DAY + 17.5 * DAY <= renew <= NOW + 60 * DAY + 20 * DAY
    assert not lc.needs_issuance(domain(le_cert=late), NOW + 60 * DAY + timedelta(seconds=1))
