"""The next action in words: the moment it names is the one ``lifecycle.next_run`` computes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from certbroker import lifecycle as lc
from certbroker.doctor.schedule import next_action
from certbroker.model import (
    ChallengeType,
    DnsObservation,
    Domain,
    LetsEncryptState,
)
from certbroker.store.base import PendingOrder
from tests.fakes.values import DAY, NOW, cert
from tests.fakes.values import settled as new

OBSERVED = DnsObservation(answered=("A 192.0.2.1",), expected=("A 127.0.0.1",))
ORDER = PendingOrder("www.example.com", "example.com", ("www.example.com",), b"k", NOW, "u")

CASES = [
    (
        "fresh",
        new(),
        None,
        "check the DNS, then order a certificate if it points at the platform",
    ),
    (
        "pending DNS",
        lc.dns_not_ready(new(), OBSERVED, "DNS_NOT_POINTING", "m", NOW, timedelta(seconds=60)),
        None,
        "check the DNS again, then order a certificate if it points at the platform",
    ),
    (
        "backing off",
        lc.failed(new(le_state=LetsEncryptState.CREATING), "ACME_X", "m", NOW),
        None,
        "try the order again (attempt 2, after backoff)",
    ),
    (
        "held by the quota",
        lc.held_back(new(), "QUOTA_NAME_SET", "m", NOW + 3 * DAY, NOW),
        None,
        "order a certificate once the CA's rate-limit bucket has a token",
    ),
    (
        "order in flight",
        new(le_state=LetsEncryptState.CREATING),
        ORDER,
        "resume the order already placed at the CA",
    ),
    (
        "in use",
        lc.issued(new(), cert(NOW - DAY), NOW),
        None,
        "renew the Let's Encrypt certificate",
    ),
    (
        "custom expiring first",
        lc.custom_installed(
            lc.issued(new(), cert(NOW - DAY), NOW), cert(NOW - DAY, timedelta(days=20)), NOW
        ),
        None,
        "flag the custom certificate as expiring (14 days left)",
    ),
    (
        "DNS-01 delegation check",
        lc.issued(new(challenge=ChallengeType.DNS_01), cert(NOW - DAY), NOW),
        None,
        "check the DNS-01 delegation again (daily)",
    ),
    (
        "disabled",
        new(letsencrypt_enabled=False, le_state=LetsEncryptState.DISABLED),
        None,
        "nothing: Let's Encrypt is disabled for this domain",
    ),
]


@pytest.mark.parametrize(("case", "domain", "order", "words"), CASES, ids=[c[0] for c in CASES])
def test_words_and_the_moment_next_run_computes(
    case: str, domain: Domain, order: PendingOrder | None, words: str
) -> None:
    what, when = next_action(domain, order, NOW)
    assert what == words
    assert when == lc.next_run(domain, NOW)


def test_a_moment_in_the_past_is_now() -> None:
    overdue = new()  # due at NOW; asked a minute later
    later = NOW + timedelta(minutes=1)
    assert next_action(overdue, None, later)[1] == later
