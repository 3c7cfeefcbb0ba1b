"""A domain held for a CA outage (``lifecycle.held_for_ca``): never due on its own, its
``next_attempt_at`` the next probe (moved without an event), released by the probe, a
restart or a retry-now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certbroker import lifecycle as lc
from certbroker.model import Domain, LetsEncryptState, RetryState, Source

NOW = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
PROBE = NOW + 5 * SECOND


def creating(attempt: int = 0) -> Domain:
    return Domain(
        name="www.example.com",
        app="my-app",
        letsencrypt_enabled=True,
        le_state=LetsEncryptState.CREATING,
        serving=Source.NONE,
        created_at=NOW - timedelta(days=1),
        updated_at=NOW - timedelta(days=1),
        retry=RetryState(
            attempt=attempt,
            next_attempt_at=NOW,
            last_error_reason="ACME_CONNECTION",
            last_error_message="earlier failure",
            last_error_at=NOW - timedelta(minutes=4),
        ),
    )


def held(attempt: int = 0) -> Domain:
    return lc.apply(creating(attempt), lc.CaUnavailable("ACME_NETWORK", "refused", PROBE), NOW)


def test_a_held_domain_shows_the_next_probe_and_is_not_due_even_once_it_passed() -> None:
    d = held(attempt=3)
    assert lc.held_for_ca(d) and lc.held_until_restart(d)
    assert d.retry.next_attempt_at == PROBE
    assert d.retry.attempt == 3 and d.le_state is LetsEncryptState.CREATING
    later = PROBE + timedelta(minutes=10)  # the probe runs late, or failed: still held
    assert not lc.is_due_for_order(d, later)
    assert d.next_run_at is None  # the scheduler never claims it for the order
    assert not lc.backing_off(d, NOW)  # a probe's time, not a backoff to ration


def test_a_failed_probe_moves_the_time_without_an_event() -> None:
    d = held()
    moved = lc.apply(d, lc.CaStillUnavailable(PROBE + timedelta(seconds=10)), NOW + 5 * SECOND)
    assert moved.retry.next_attempt_at == PROBE + timedelta(seconds=10)
    assert lc.changed(d, moved) and not lc.worth_an_event(d, moved)
    assert lc.held_for_ca(moved) and moved.next_run_at is None
    # A domain not held for the CA is left alone.
    other = creating()
    assert lc.apply(other, lc.CaStillUnavailable(PROBE), NOW) == other


def test_the_probe_a_restart_and_a_retry_now_each_release_the_hold() -> None:
    d = held(attempt=2)
    at = NOW + timedelta(minutes=3)
    for released in (
        lc.apply(d, lc.CaAvailable(), at),
        lc.apply(d, lc.Restarted(), at),
        lc.retry_now(d, at),
    ):
        assert not lc.held_for_ca(released) and lc.is_due_for_order(released, at)
        assert released.retry.next_attempt_at == at and released.next_run_at == at
        assert released.retry.attempt == 2  # no failure counted, none forgiven
        assert released.retry.last_error_reason == ""  # no longer what it waits for
        assert released.retry.forced_at is None  # a CA hold is no backoff to ration
