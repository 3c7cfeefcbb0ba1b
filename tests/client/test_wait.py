"""When ``--wait`` stops, and the progress line it prints (pure logic, fixed times)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from certbroker.v1 import domain_pb2
from certbroker_client import wait

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def domain(state: int, **fields: object) -> domain_pb2.Domain:
    return domain_pb2.Domain(
        domain="www.example.com",
        app="shop",
        lets_encrypt_state=state,  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def le_cert(days_left: int) -> domain_pb2.CertificateInfo:
    return domain_pb2.CertificateInfo(
        sha256_fingerprint="ab" * 32, not_after=ts(T0 + timedelta(days=days_left))
    )


def test_in_use_and_not_used_are_success() -> None:
    in_use = domain(
        domain_pb2.LETS_ENCRYPT_STATE_IN_USE,
        serving_source=domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT,
        lets_encrypt_certificate=le_cert(89),
    )
    done = wait.verdict(in_use, T0)
    assert done == wait.Verdict(
        wait.Outcome.SETTLED, "In use: a Let's Encrypt certificate serves, expires in 89 days"
    )
    not_used = domain(
        domain_pb2.LETS_ENCRYPT_STATE_NOT_USED,
        serving_source=domain_pb2.CERTIFICATE_SOURCE_CUSTOM,
        custom_certificate=le_cert(30),
    )
    assert wait.verdict(not_used, T0) == wait.Verdict(
        wait.Outcome.SETTLED, "Not used: the custom certificate serves, expires in 30 days"
    )


def test_action_required_stops_with_the_action() -> None:
    d = domain(
        domain_pb2.LETS_ENCRYPT_STATE_ACTION_REQUIRED,
        action_required="create _acme-challenge.example.com CNAME x.acme.example.net",
    )
    assert wait.verdict(d, T0) == wait.Verdict(
        wait.Outcome.STOPPED,
        "Action required: create _acme-challenge.example.com CNAME x.acme.example.net",
    )


def test_working_states_keep_waiting_and_disabled_stops() -> None:
    working = (domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS, domain_pb2.LETS_ENCRYPT_STATE_CREATING)
    for state in working:
        assert wait.verdict(domain(state), T0) is None
    disabled = wait.verdict(domain(domain_pb2.LETS_ENCRYPT_STATE_DISABLED), T0)
    assert disabled is not None and disabled.outcome is wait.Outcome.STOPPED


def test_a_renewal_waits_past_in_use_until_the_new_certificate() -> None:
    renewing = domain(
        domain_pb2.LETS_ENCRYPT_STATE_IN_USE,
        serving_source=domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT,
        lets_encrypt_certificate=le_cert(20),
        renewal_time=ts(T0 - timedelta(days=10)),
    )
    assert wait.verdict(renewing, T0) is not None  # add --wait: it serves, done
    assert wait.verdict(renewing, T0, renewing=True) is None  # renew --wait: not yet
    renewed = domain(
        domain_pb2.LETS_ENCRYPT_STATE_IN_USE,
        serving_source=domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT,
        lets_encrypt_certificate=le_cert(90),
        renewal_time=ts(T0 + timedelta(days=60)),
    )
    assert wait.verdict(renewed, T0, renewing=True) is not None


def test_progress_line_shows_failure_and_next_try() -> None:
    d = domain(
        domain_pb2.LETS_ENCRYPT_STATE_CREATING,
        retry=domain_pb2.RetryState(
            attempt=2,
            next_attempt_time=ts(T0 + timedelta(minutes=2, seconds=5)),
            last_error_reason="ACME_UNAUTHORIZED",
            last_error_message="the CA could not\nfetch the token",
        ),
    )
    line = wait.progress_line(d, T0, timedelta(seconds=75))
    assert line == (
        "+1:15 www.example.com: Creating; attempt 2 failed: ACME_UNAUTHORIZED: the CA could not "
        "fetch the token; next try in 2 min"
    )
    resting = domain(domain_pb2.LETS_ENCRYPT_STATE_IN_USE)
    assert wait.progress_line(resting, T0, timedelta(0)) == "+0:00 www.example.com: In use"
