"""The next thing the broker will do for a domain, in words, and when.

It mirrors ``lifecycle.next_run`` (which computes only the time), naming
each candidate moment, so a person reads "renew the Let's Encrypt
certificate" rather than a bare timestamp. The tests hold the two together:
the moment chosen here is the one ``next_run`` returns.
"""

from __future__ import annotations

from datetime import datetime

from certbroker import lifecycle
from certbroker.limits import CA_RATE_LIMITED
from certbroker.model import Domain, LetsEncryptState
from certbroker.store.base import PendingOrder


def _issuance(domain: Domain, order: PendingOrder | None) -> str:
    """What the scheduler does when an issuance is wanted (new or renewal)."""
    retry = domain.retry
    if order is not None and order.order_url:
        return "resume the order already placed at the CA"
    if retry.last_error_reason.startswith("QUOTA_") or retry.last_error_reason == CA_RATE_LIMITED:
        return "order a certificate once the CA's rate-limit bucket has a token"
    if domain.le_state is LetsEncryptState.PENDING_DNS:
        again = " again" if retry.last_error_reason else ""
        return f"check the DNS{again}, then order a certificate if it points at the platform"
    if domain.le_state is LetsEncryptState.ACTION_REQUIRED:
        if retry.last_error_reason == "CAA_FORBIDS":
            return "check CAA again, then order a certificate if it allows the CA"
        if lifecycle.refused_by_ca(domain):
            return "check DNS and CAA again; the CA is asked again after the backoff"
        return "look for the DNS-01 delegation again, then order a certificate"
    if retry.attempt > 0:
        return f"try the order again (attempt {retry.attempt + 1}, after backoff)"
    if domain.le_cert is not None:
        return "renew the Let's Encrypt certificate"
    return "order a certificate"


def candidates(
    domain: Domain, order: PendingOrder | None, now: datetime
) -> list[tuple[datetime, str]]:
    """Every moment ``lifecycle.next_run`` considers, each with what happens then."""
    found: list[tuple[datetime, str]] = []
    custom = domain.custom_cert
    if custom is not None and now < custom.not_after:
        found.append((custom.not_after, "fall back from the expiring custom certificate"))
        if not domain.custom_expiring:
            found.append(
                (
                    custom.not_after - lifecycle.EXPIRING_WINDOW,
                    "flag the custom certificate as expiring (14 days left)",
                )
            )
    le_cert = domain.le_cert
    if le_cert is not None and now < le_cert.not_before - lifecycle.CLOCK_SKEW:
        found.append(
            (le_cert.not_before - lifecycle.CLOCK_SKEW, "start serving the new certificate")
        )
    if le_cert is not None and now < le_cert.not_after:
        found.append((le_cert.not_after, "drop the expiring Let's Encrypt certificate"))
    if domain.letsencrypt_enabled:
        if lifecycle.needs_issuance(domain, now):
            if not lifecycle.held_until_restart(domain):  # until a restart or the CA is back
                found.append((domain.retry.next_attempt_at or now, _issuance(domain, order)))
        elif le_cert is not None:
            renew_at = lifecycle.renewal_due(domain)
            assert renew_at is not None
            where = " (inside the CA's suggested window)" if domain.renewal.at else ""
            found.append((renew_at, f"renew the Let's Encrypt certificate{where}"))
            if lifecycle.uses_dns01(domain) and domain.retry.next_attempt_at is not None:
                what = "check the DNS-01 delegation again (daily)"
                if lifecycle.is_platform(domain):
                    what = "check the broker may still write in the platform's zone (daily)"
                found.append((domain.retry.next_attempt_at, what))
            check = domain.renewal.next_check
            if check is not None and now < le_cert.not_after:
                found.append((check, "ask the CA for its renewal window again (ARI)"))
    return found


def next_action(
    domain: Domain, order: PendingOrder | None, now: datetime
) -> tuple[str, datetime | None]:
    """``(what, when)``; ``when`` is never in the past (due now is ``now``)."""
    found = candidates(domain, order, now)
    if not found:
        if not domain.letsencrypt_enabled:
            return "nothing: Let's Encrypt is disabled for this domain", None
        return "nothing is scheduled", None
    when, what = min(found, key=lambda item: item[0])
    return what, max(when, now)
