"""Problem classification: by URN, HTTP status and exception type only."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta

import pytest
import requests
from acme import errors as acme_errors
from acme import messages

from certbroker.acme.orders import authz_problem
from certbroker.acme.problems import (
    PROBLEM_TABLE,
    AcmeProblem,
    HttpStatusError,
    classify,
    from_acme_error,
    is_transient,
    parse_retry_after,
    rate_limit_scope,
)


def _error(code: str, detail: str = "some words", **extra: object) -> messages.Error:
    err = messages.Error(typ="urn:ietf:params:acme:error:" + code, detail=detail)
    for name, value in extra.items():
        setattr(err, name, value)
    return err


@pytest.mark.parametrize(
    ("code", "reason", "retryable"),
    [
        ("rateLimited", "ACME_RATE_LIMITED", True),
        ("caa", "ACME_CAA", False),
        ("dns", "ACME_DNS", True),
        ("connection", "ACME_CONNECTION", True),
        ("unauthorized", "ACME_UNAUTHORIZED", True),
        ("incorrectResponse", "ACME_INCORRECT_RESPONSE", True),
        ("serverInternal", "ACME_SERVER_INTERNAL", True),
        ("badCSR", "ACME_BAD_CSR", False),
        ("rejectedIdentifier", "ACME_REJECTED_IDENTIFIER", False),
        ("unsupportedIdentifier", "ACME_REJECTED_IDENTIFIER", False),
        ("malformed", "ACME_MALFORMED", False),
        ("badNonce", "ACME_BAD_NONCE", True),
        ("tls", "ACME_TLS", True),
        ("userActionRequired", "ACME_USER_ACTION_REQUIRED", False),
    ],
)
def test_problem_types(code: str, reason: str, retryable: bool) -> None:
    problem = classify(_error(code))
    assert (problem.reason, problem.retryable) == (reason, retryable)
    assert problem.type_urn == "urn:ietf:params:acme:error:" + code
    assert problem.detail == "some words"


def test_detail_text_never_decides() -> None:
    """Words that look like another problem do not change the verdict."""
    problem = classify(_error("serverInternal", detail="CAA record forbids issuance; rate limited"))
    assert problem.reason == "ACME_SERVER_INTERNAL"


def test_rate_limited_carries_retry_after_seconds() -> None:
    err = _error("rateLimited", http_status=429, retry_after_header="3600")
    problem = classify(err)
    assert problem.reason == "ACME_RATE_LIMITED"
    assert problem.retryable
    assert problem.retry_after == timedelta(hours=1)


def test_rate_limited_retry_after_http_date() -> None:
    now = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
    assert parse_retry_after("Fri, 27 Nov 2026 12:30:00 GMT", now=now) == timedelta(minutes=30)
    assert parse_retry_after("Fri, 27 Nov 2026 11:00:00 GMT", now=now) == timedelta(0)
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_compound_takes_terminal_subproblem() -> None:
    err = messages.Error.from_json(
        {
            "type": "urn:ietf:params:acme:error:compound",
            "detail": "several",
            "subproblems": [
                {"type": "urn:ietf:params:acme:error:dns", "detail": "a",
                 "identifier": {"type": "dns", "value": "a.example"}},
                {"type": "urn:ietf:params:acme:error:caa", "detail": "b",
                 "identifier": {"type": "dns", "value": "b.example"}},
            ],
        }
    )  # fmt: skip
    problem = classify(err)
    assert (problem.reason, problem.retryable, problem.identifier) == (
        "ACME_CAA",
        False,
        "b.example",
    )


def test_unknown_type_uses_status_else_terminal() -> None:
    assert classify(messages.Error(typ="urn:example:weird", detail="x")).reason == "ACME_UNKNOWN"
    odd_5xx = messages.Error(typ="about:blank")
    odd_5xx.http_status = 503
    assert classify(odd_5xx).reason == "ACME_SERVER_INTERNAL"


@pytest.mark.parametrize(
    ("exc", "reason", "retryable"),
    [
        (HttpStatusError(502, None), "ACME_SERVER_INTERNAL", True),
        (HttpStatusError(429, "60"), "ACME_RATE_LIMITED", True),
        (HttpStatusError(404, None), "ACME_MALFORMED", False),
        (requests.ConnectionError("reset"), "ACME_NETWORK", True),
        (ConnectionRefusedError(), "ACME_NETWORK", True),
        (requests.ReadTimeout(), "ACME_TIMEOUT", True),
        (acme_errors.TimeoutError(), "ACME_TIMEOUT", True),
        (acme_errors.ClientError("odd"), "ACME_PROTOCOL", True),
        (acme_errors.IssuanceError(_error("badCSR")), "ACME_BAD_CSR", False),
        (RuntimeError("bug"), "ACME_UNKNOWN", False),
    ],
)
def test_exception_types(exc: BaseException, reason: str, retryable: bool) -> None:
    problem = classify(exc)
    assert (problem.reason, problem.retryable) == (reason, retryable)


def test_http_429_retry_after() -> None:
    assert classify(HttpStatusError(429, "60")).retry_after == timedelta(seconds=60)


def test_transient_inside_a_step() -> None:
    assert is_transient(_error("badNonce"))
    assert is_transient(_error("serverInternal"))
    assert is_transient(requests.ConnectionError())
    assert is_transient(requests.Timeout())
    assert is_transient(HttpStatusError(503, None))
    assert not is_transient(_error("rateLimited"))
    assert not is_transient(_error("caa"))
    assert not is_transient(HttpStatusError(404, None))


def test_every_table_entry_is_upper_snake() -> None:
    for verdict in PROBLEM_TABLE.values():
        assert verdict.reason == verdict.reason.upper()
        assert verdict.reason.startswith("ACME_")


def test_failed_authorization_yields_challenge_problem() -> None:
    """What an invalid authorization with a caa challenge error becomes (Pebble can't show it)."""
    authz = messages.Authorization.from_json(
        {
            "identifier": {"type": "dns", "value": "forbidden.example"},
            "status": "invalid",
            "challenges": [
                {
                    "type": "http-01",
                    "url": "https://ca.example/chall/1",
                    "token": "DGyRejmCefe7v4NfDGDKfA",
                    "status": "invalid",
                    "error": {
                        "type": "urn:ietf:params:acme:error:caa",
                        "detail": "CAA record for forbidden.example prevents issuance",
                    },
                }
            ],
        }
    )
    problem = authz_problem(authz)
    assert isinstance(problem, AcmeProblem)
    assert (problem.reason, problem.retryable) == ("ACME_CAA", False)
    assert problem.identifier == "forbidden.example"


def test_from_acme_error_explicit_status() -> None:
    problem = from_acme_error(_error("rateLimited"), http_status=429, retry_after="5")
    assert problem.retry_after == timedelta(seconds=5)


@pytest.mark.parametrize(
    ("anchor", "scope"),
    [
        ("new-orders-per-account", "orders"),
        ("new-certificates-per-registered-domain", "registered_domain"),
        ("new-certificates-per-exact-set-of-identifiers", "name_set"),
        ("authorization-failures-per-identifier-per-account", "failed_authorizations"),
    ],
)
def test_rate_limit_scope_follows_the_documentation_link(anchor: str, scope: str) -> None:
    detail = f"too many requests, retry after 2026-01-01: see https://letsencrypt.org/docs/rate-limits/#{anchor}"
    problem = AcmeProblem("ACME_RATE_LIMITED", detail, retryable=True)
    assert rate_limit_scope(problem) == scope


def test_an_unnamed_rate_limit_pauses_the_whole_account() -> None:
    problem = AcmeProblem("ACME_RATE_LIMITED", "slow down", retryable=True)
    assert rate_limit_scope(problem) == "account"
