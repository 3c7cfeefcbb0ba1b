"""The CA's shared health: one outage for everyone, a capped probe backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certbroker.acme.problems import AcmeProblem
from certbroker.ca_health import CaHealth

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def down(reason: str = "ACME_NETWORK") -> AcmeProblem:
    problem = AcmeProblem(reason, "connection refused", retryable=True)
    problem.ca_unavailable = True
    return problem


def test_probes_back_off_from_5_seconds_doubling_to_5_minutes() -> None:
    health = CaHealth()
    now = T0
    waits = [health.failed(down(), now).next_probe - now]
    for _ in range(9):
        outage = health.probe_failed(down(), now)
        waits.append(outage.next_probe - now)
    assert [w.total_seconds() for w in waits] == [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]


def test_concurrent_failures_are_one_outage_and_a_probe_success_ends_it() -> None:
    health = CaHealth()
    first = health.failed(down(), T0)
    assert health.failed(down("ACME_SERVER_INTERNAL"), T0 + timedelta(seconds=1)) == first
    assert not health.available and health.outages == 1
    health.probe_succeeded(T0 + timedelta(seconds=65))
    assert health.available and health.paused(T0 + timedelta(days=1)) == 65


def test_the_backoff_restarts_at_5_seconds_only_after_a_real_success() -> None:
    health = CaHealth()
    health.failed(down(), T0)
    health.probe_succeeded(T0)
    # The directory answers but orders still fail: the next outage waits longer.
    assert health.failed(down(), T0).next_probe - T0 == timedelta(seconds=10)
    health.probe_succeeded(T0)
    health.succeeded()
    assert health.failed(down(), T0).next_probe - T0 == timedelta(seconds=5)


def test_only_request_level_ca_failures_are_outages() -> None:
    from acme import messages
    from requests import ConnectionError as RequestsConnectionError

    from certbroker.acme.problems import HttpStatusError, classify

    assert classify(RequestsConnectionError("refused")).ca_unavailable
    assert classify(HttpStatusError(502, None)).ca_unavailable
    server = messages.Error(typ="urn:ietf:params:acme:error:serverInternal", detail="x")
    assert classify(server).ca_unavailable
    gone = messages.Error(typ="urn:ietf:params:acme:error:accountDoesNotExist", detail="x")
    assert classify(gone).account_gone and not classify(gone).unauthorized
    refused = messages.Error(typ="urn:ietf:params:acme:error:unauthorized", detail="x")
    refused.http_status = 403  # type: ignore[attr-defined]
    # Not "the account is gone": only a look at the account tells (Issuer.account_status).
    assert classify(refused).unauthorized and not classify(refused).account_gone
    missing = messages.Error(typ="urn:ietf:params:acme:error:malformed", detail="no order")
    missing.http_status = 404  # type: ignore[attr-defined]
    assert classify(missing).not_found and not classify(missing).ca_unavailable
    # A validation failure (the challenge's verdict) is the domain's, never the CA's.
    assert not AcmeProblem("ACME_TIMEOUT", "order did not complete", retryable=True).ca_unavailable
