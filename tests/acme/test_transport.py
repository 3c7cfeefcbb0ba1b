"""Transient failures are retried inside one step; everything else surfaces at once."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from acme import messages

from certbroker.acme import AcmeIssuer, AcmeProblem, MemoryAccountStore
from certbroker.acme.http01 import Http01Responder
from certbroker.acme.transport import StepRetry, Transport
from certbroker.backoff import Backoff


def _transport(attempts: int = 4) -> Transport:
    return Transport(ca_bundle=None, max_workers=2, retry=StepRetry(attempts=attempts))


async def test_transient_errors_retried_then_succeed() -> None:
    transport = _transport()
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise requests.ConnectionError("connection reset by peer")
        if calls == 2:
            raise messages.Error(typ="urn:ietf:params:acme:error:badNonce")
        return "ok"

    try:
        assert await transport.call(flaky) == "ok"
        assert calls == 3
    finally:
        await transport.close()


async def test_non_transient_surfaces_immediately() -> None:
    transport = _transport()
    calls = 0

    def limited() -> str:
        nonlocal calls
        calls += 1
        err = messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="slow down")
        err.retry_after_header = "120"
        raise err

    try:
        with pytest.raises(AcmeProblem) as info:
            await transport.call(limited)
        assert calls == 1
        assert info.value.reason == "ACME_RATE_LIMITED"
        assert info.value.retry_after is not None
        assert info.value.retry_after.total_seconds() == 120
    finally:
        await transport.close()


async def test_gives_up_after_a_few_attempts() -> None:
    transport = _transport()
    calls = 0

    def down() -> str:
        nonlocal calls
        calls += 1
        raise requests.ConnectionError("refused")

    try:
        with pytest.raises(AcmeProblem) as info:
            await transport.call(down)
        assert calls == 4
        assert (info.value.reason, info.value.retryable) == ("ACME_NETWORK", True)
    finally:
        await transport.close()


def test_step_retry_waits_double_from_the_first_and_stop_at_the_maximum() -> None:
    """The one doubling ``Backoff`` (the scheduler's), at step scale, no jitter here."""
    policy = StepRetry(
        attempts=6,
        backoff=Backoff(timedelta(milliseconds=50), timedelta(seconds=1)),
        jitter=timedelta(0),
    )
    assert [policy.wait(n) for n in range(1, 7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    slept: list[float] = []

    def always_reset() -> None:
        raise requests.ConnectionError("reset")

    with pytest.raises(requests.ConnectionError):
        policy.run(always_reset, sleep=slept.append)
    assert slept == [0.05, 0.1, 0.2, 0.4, 0.8]  # no wait after the last try


async def test_start_against_dead_ca_is_network_problem() -> None:
    iss = AcmeIssuer(
        "https://127.0.0.1:1/dir",
        ca_bundle=None,
        email=None,
        account_store=MemoryAccountStore(),
        responder=Http01Responder(),
        max_workers=2,
        step_attempts=4,
    )
    try:
        with pytest.raises(AcmeProblem) as info:
            await iss.start()
        assert info.value.reason == "ACME_NETWORK"
    finally:
        await iss.close()
