"""Transient failures are retried inside one step; everything else surfaces at once."""

from __future__ import annotations

import pytest
import requests
from acme import messages

from certbroker.acme import AcmeIssuer, AcmeProblem, MemoryAccountStore
from certbroker.acme.http01 import Http01Responder


def _issuer() -> AcmeIssuer:
    return AcmeIssuer(
        "https://127.0.0.1:1/dir",
        ca_bundle=None,
        email=None,
        account_store=MemoryAccountStore(),
        responder=Http01Responder(),
        max_workers=2,
        step_attempts=4,
    )


async def test_transient_errors_retried_then_succeed() -> None:
    iss = _issuer()
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
        assert await iss._offload(flaky) == "ok"
        assert calls == 3
    finally:
        await iss.close()


async def test_non_transient_surfaces_immediately() -> None:
    iss = _issuer()
    calls = 0

    def limited() -> str:
        nonlocal calls
        calls += 1
        err = messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="slow down")
        err.retry_after_header = "120"
        raise err

    try:
        with pytest.raises(AcmeProblem) as info:
            await iss._offload(limited)
        assert calls == 1
        assert info.value.reason == "ACME_RATE_LIMITED"
        assert info.value.retry_after is not None
        assert info.value.retry_after.total_seconds() == 120
    finally:
        await iss.close()


async def test_gives_up_after_a_few_attempts() -> None:
    iss = _issuer()
    calls = 0

    def down() -> str:
        nonlocal calls
        calls += 1
        raise requests.ConnectionError("refused")

    try:
        with pytest.raises(AcmeProblem) as info:
            await iss._offload(down)
        assert calls == 4
        assert (info.value.reason, info.value.retryable) == ("ACME_NETWORK", True)
    finally:
        await iss.close()


async def test_start_against_dead_ca_is_network_problem() -> None:
    iss = _issuer()
    try:
        with pytest.raises(AcmeProblem) as info:
            await iss.start()
        assert info.value.reason == "ACME_NETWORK"
    finally:
        await iss.close()
