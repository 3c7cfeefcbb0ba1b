"""The pure state machine of a domain: ``(domain, observation, now) -> domain``.

No I/O here; the scheduler observes (DNS, CAA, quota, the CA) and calls one
of these transitions, then writes the result. Every transition ends in
``settle``, which derives what serves, the seed's status and the next time the
domain needs work, so no path can forget one of them.

States (``LetsEncryptState``):
- transient, worked by the scheduler: PENDING_DNS (DNS checked every 60 s),
  CREATING (an order runs or is retried with backoff), ACTION_REQUIRED (a
  DNS-01 domain without its one-time delegation, checked every 60 s);
- resting: IN_USE, NOT_USED (custom serves; Let's Encrypt kept warm), DISABLED.

DNS-01 domains (wildcards, or ``challenge`` DNS_01) also get a delegation
check while resting: once a day (``DELEGATION_RECHECK``, never later than the
renewal time) the scheduler looks at the CNAME again, so a delegation removed
after issuance is reported (``action_required``) well before the renewal
needs it, while the current certificate keeps serving (the state stays
IN_USE: that is what serves). ``retry.next_attempt_at`` holds that time, so
it survives restarts like the backoff does.

Forced retries (IssueCertificate on a known domain, ``retry_now``) are free
while nothing has failed yet: a quota hold, the 60-second DNS or delegation
cadence and a missing setting are all re-checked locally before the CA hears
anything. A domain that is *backing off* (``backing_off``: an attempt failed
and the next one is in the future) may be forced at most once per
``FORCED_RETRY_INTERVAL`` (``forced_retry_wait`` says how long is left): each
forced try can cost the shared ACME account a failed authorization, which
Let's Encrypt refills at one per name every 12 minutes. The time of the last
forced retry is a column (``retry.forced_at``), so a restart does not reopen
it, and neither does switching Let's Encrypt off and on (``set_letsencrypt``
keeps the retry facts) or removing a custom certificate (``custom_removed``
keeps the backoff). Otherwise only the wait running out, or a change the
broker observes on its own cadence (DNS pointing, the delegation appearing),
lets the next attempt go.

Events: every write of a domain used to append an event, and a DNS re-check
moves several times (check time, next check, error time) without changing
anything a router or a status page acts on. ``worth_an_event`` compares what
is shown; a transition that moves only those times is written to the
scheduling columns alone (``Transaction.put_schedule``), without an event.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from certbroker.backoff import renewal_time, retry_delay
from certbroker.model import (
    CertificateInfo,
    ChallengeType,
    DnsObservation,
    Domain,
    LetsEncryptState,
    RetryState,
    Source,
)

EXPIRING_WINDOW = timedelta(days=14)
#: Default spacing of forced retries of a failing domain (CERTBROKER_FORCED_RETRY_INTERVAL).
FORCED_RETRY_INTERVAL = timedelta(minutes=10)
#: How often a resting DNS-01 domain's delegation is looked at again.
DELEGATION_RECHECK = timedelta(days=1)
_RESTING = (LetsEncryptState.IN_USE, LetsEncryptState.NOT_USED, LetsEncryptState.DISABLED)


# A certificate fresh from the CA may carry a notBefore a moment ahead of our clock
# (Let's Encrypt backdates by an hour; Pebble does not). Routers install a new
# certificate at once anyway, so a few minutes of skew must not count as "not valid".
CLOCK_SKEW = timedelta(minutes=5)


def is_valid_at(cert: CertificateInfo | None, now: datetime) -> bool:
    return cert is not None and cert.not_before - CLOCK_SKEW <= now < cert.not_after


def cert_renewal_time(cert: CertificateInfo) -> datetime:
    """Two thirds into its life; if our clock says we got it later than its notBefore,
    two thirds into what was left of it then.

    With a CA clock behind ours (or an injected clock ahead), a notBefore-based
    renewal time can already be past when the certificate arrives: the broker
    would renew at once, again and again, until the weekly quota stopped it.
    """
    start = cert.not_before
    if cert.received_at is not None and cert.received_at > start:
        start = min(cert.received_at, cert.not_after)
    return renewal_time(start, cert.not_after)


def uses_dns01(domain: Domain) -> bool:
    """Validated by DNS-01 through the delegation: every wildcard, and DNS_01 by choice."""
    return domain.challenge is ChallengeType.DNS_01 or domain.is_wildcard


def needs_issuance(domain: Domain, now: datetime) -> bool:
    """A Let's Encrypt order is wanted: none yet, or two thirds of its life are gone."""
    if not domain.letsencrypt_enabled:
        return False
    cert = domain.le_cert
    # A certificate not valid *yet* (the CA's clock is well ahead of ours) is not
    # missing: ordering again would burn the quota; settle schedules a run for it.
    return cert is None or now >= cert_renewal_time(cert) or now >= cert.not_after


def is_due_for_order(domain: Domain, now: datetime) -> bool:
    """Wanted and not held back by backoff, the 60-second DNS cadence or a quota."""
    next_attempt = domain.retry.next_attempt_at
    return needs_issuance(domain, now) and (next_attempt is None or next_attempt <= now)


def is_due_for_delegation_check(domain: Domain, now: datetime) -> bool:
    """A resting DNS-01 domain whose periodic delegation check has come."""
    check = domain.retry.next_attempt_at
    return (
        domain.letsencrypt_enabled
        and uses_dns01(domain)
        and not needs_issuance(domain, now)
        and check is not None
        and check <= now
    )


def _next_delegation_check(domain: Domain, now: datetime) -> datetime:
    check = now + DELEGATION_RECHECK
    if domain.le_cert is not None:
        check = min(check, max(now, cert_renewal_time(domain.le_cert)))
    return check


def settle(domain: Domain, now: datetime) -> Domain:
    """Derive what serves, the status, the expiring flag and the next run from the facts."""
    if is_valid_at(domain.custom_cert, now):
        serving = Source.CUSTOM
    elif is_valid_at(domain.le_cert, now):
        serving = Source.LETS_ENCRYPT
    else:
        serving = Source.NONE

    if not domain.letsencrypt_enabled:
        state = LetsEncryptState.DISABLED
    elif serving is Source.CUSTOM:
        state = LetsEncryptState.NOT_USED
    elif serving is Source.LETS_ENCRYPT:
        state = LetsEncryptState.IN_USE
    elif domain.le_state in _RESTING:
        # Nothing serves and Let's Encrypt is wanted: start from the DNS check.
        state = LetsEncryptState.PENDING_DNS
    else:
        state = domain.le_state

    custom = domain.custom_cert
    expiring = custom is not None and now >= custom.not_after - EXPIRING_WINDOW
    settled = replace(
        domain, serving=serving, le_state=state, custom_expiring=expiring, updated_at=now
    )
    return replace(settled, next_run_at=next_run(settled, now))


def next_run(domain: Domain, now: datetime) -> datetime | None:
    """The earliest moment anything about the domain changes without a user action."""
    times: list[datetime] = []
    custom = domain.custom_cert
    if custom is not None and now < custom.not_after:
        times.append(custom.not_after)  # fall back at that very moment
        if not domain.custom_expiring:
            times.append(custom.not_after - EXPIRING_WINDOW)
    le_cert = domain.le_cert
    if le_cert is not None and now < le_cert.not_before - CLOCK_SKEW:
        times.append(le_cert.not_before - CLOCK_SKEW)  # it starts serving then
    if le_cert is not None and now < le_cert.not_after:
        times.append(le_cert.not_after)
    if domain.letsencrypt_enabled:
        if needs_issuance(domain, now):
            times.append(domain.retry.next_attempt_at or now)
        elif le_cert is not None:
            times.append(cert_renewal_time(le_cert))
            if uses_dns01(domain) and domain.retry.next_attempt_at is not None:
                times.append(domain.retry.next_attempt_at)  # the delegation check
    return max(min(times), now) if times else None


def _has_usable_le(domain: Domain, now: datetime) -> bool:
    return is_valid_at(domain.le_cert, now)


def dns_not_ready(
    domain: Domain,
    observation: DnsObservation,
    reason: str,
    message: str,
    now: datetime,
    interval: timedelta,
) -> Domain:
    """DNS does not target the platform yet: check again in ``interval`` (the seed's 60 s).

    It costs the CA nothing, so it is not a failed attempt and does not back off.
    """
    state = domain.le_state if _has_usable_le(domain, now) else LetsEncryptState.PENDING_DNS
    retry = replace(
        domain.retry,
        next_attempt_at=now + interval,
        last_error_reason=reason,
        last_error_message=message,
        last_error_at=now,
    )
    return settle(replace(domain, le_state=state, dns=observation, retry=retry), now)


def dns_ready(domain: Domain, observation: DnsObservation) -> Domain:
    return replace(domain, dns=observation)


def failed(
    domain: Domain,
    reason: str,
    message: str,
    now: datetime,
    retry_after: timedelta | None = None,
    state: LetsEncryptState | None = None,
) -> Domain:
    """A try failed (CAA forbids, the CA refused, the network broke): back off 1, 2, 4 … min."""
    attempt = domain.retry.attempt + 1
    wait = retry_delay(attempt)
    if retry_after is not None and retry_after > wait:
        wait = retry_after
    retry = replace(
        domain.retry,  # keeps forced_at: failing again does not refill forced retries
        attempt=attempt,
        next_attempt_at=now + wait,
        last_error_reason=reason,
        last_error_message=message,
        last_error_at=now,
    )
    new_state = state or (
        domain.le_state
        if domain.le_state is not LetsEncryptState.PENDING_DNS
        else LetsEncryptState.CREATING
    )
    return settle(replace(domain, retry=retry, le_state=new_state), now)


def held_back(domain: Domain, reason: str, message: str, until: datetime, now: datetime) -> Domain:
    """A quota is used up: wait for its next free slot without counting a failure."""
    retry = replace(
        domain.retry,
        next_attempt_at=until,
        last_error_reason=reason,
        last_error_message=message,
        last_error_at=now,
    )
    return settle(replace(domain, retry=retry), now)


def action_required(
    domain: Domain,
    instruction: str,
    now: datetime,
    interval: timedelta,
    *,
    reason: str = "ACTION_REQUIRED",
    message: str = "",
) -> Domain:
    """The customer must act (the DNS-01 delegation); look again every ``interval``.

    ``instruction`` (e.g. the record to create, ready to paste) goes to
    ``action_required``; ``reason``/``message`` (default: the instruction) to the
    retry facts. Not a failed attempt: no backoff, the CA heard nothing. A
    usable Let's Encrypt certificate keeps serving and keeps its state.
    """
    state = domain.le_state if _has_usable_le(domain, now) else LetsEncryptState.ACTION_REQUIRED
    retry = replace(
        domain.retry,
        next_attempt_at=now + interval,
        last_error_reason=reason,
        last_error_message=message or instruction,
        last_error_at=now,
    )
    return settle(replace(domain, le_state=state, action_required=instruction, retry=retry), now)


def delegated(domain: Domain, now: datetime) -> Domain:
    """The delegation is in place before an order: nothing left for the customer to do."""
    state = (
        LetsEncryptState.CREATING
        if domain.le_state is LetsEncryptState.ACTION_REQUIRED
        else domain.le_state
    )
    return settle(replace(domain, le_state=state, action_required=""), now)


def delegation_confirmed(domain: Domain, now: datetime) -> Domain:
    """A resting domain's periodic check found the delegation: look again in a day."""
    retry = replace(domain.retry, next_attempt_at=_next_delegation_check(domain, now))
    return settle(replace(domain, action_required="", retry=retry), now)


def delegation_check_failed(
    domain: Domain, reason: str, message: str, now: datetime, interval: timedelta
) -> Domain:
    """The periodic check could not tell (DNS timeout, SERVFAIL): ask again in ``interval``."""
    retry = replace(
        domain.retry,
        next_attempt_at=now + interval,
        last_error_reason=reason,
        last_error_message=message,
        last_error_at=now,
    )
    return settle(replace(domain, retry=retry), now)


def order_started(domain: Domain, now: datetime) -> Domain:
    state = domain.le_state if _has_usable_le(domain, now) else LetsEncryptState.CREATING
    return settle(replace(domain, le_state=state, action_required=""), now)


def issued(domain: Domain, cert: CertificateInfo, now: datetime) -> Domain:
    """Success resets the backoff; the new certificate serves unless a custom one does.

    A DNS-01 domain gets its first periodic delegation check scheduled.
    """
    done = replace(domain, le_cert=cert, retry=RetryState(), action_required="")
    if uses_dns01(done):
        done = replace(done, retry=RetryState(next_attempt_at=_next_delegation_check(done, now)))
    return settle(done, now)


def backing_off(domain: Domain, now: datetime) -> bool:
    """An attempt failed and the next one waits: forcing it would cost the CA's quotas."""
    next_attempt = domain.retry.next_attempt_at
    return (
        domain.retry.attempt > 0
        and next_attempt is not None
        and next_attempt > now
        and needs_issuance(domain, now)
    )


def forced_retry_wait(domain: Domain, now: datetime, interval: timedelta) -> timedelta | None:
    """How long until a forced retry is allowed again; ``None`` when it is allowed now."""
    forced = domain.retry.forced_at
    if not backing_off(domain, now) or forced is None or forced + interval <= now:
        return None
    return forced + interval - now


def retry_now(domain: Domain, now: datetime) -> Domain:
    """IssueCertificate on a known domain: run the next step at once (quotas still count).

    Forcing a domain that is backing off is recorded in ``retry.forced_at``;
    the caller checks ``forced_retry_wait`` first. The attempt count is kept.
    """
    if not needs_issuance(domain, now):
        return settle(domain, now)
    retry = replace(domain.retry, next_attempt_at=now)
    if backing_off(domain, now):
        retry = replace(retry, forced_at=now)
    return settle(replace(domain, retry=retry), now)


def custom_installed(domain: Domain, cert: CertificateInfo, now: datetime) -> Domain:
    return settle(replace(domain, custom_cert=cert), now)


def custom_removed(
    domain: Domain, now: datetime, interval: timedelta = FORCED_RETRY_INTERVAL
) -> Domain:
    """Fallback: the Let's Encrypt certificate serves in the same write; none yet → order now.

    Ordering at once while backing off is a forced retry, rationed like one
    (``interval``): uploading and deleting a custom certificate in a loop must
    not become a way around the backoff.
    """
    fallback = replace(domain, custom_cert=None)
    wanted = fallback.letsencrypt_enabled and not _has_usable_le(fallback, now)
    if wanted and forced_retry_wait(fallback, now, interval) is None:
        return retry_now(fallback, now)
    return settle(fallback, now)


def set_letsencrypt(domain: Domain, enabled: bool, now: datetime) -> Domain:
    """Opt in or out. The retry facts stay: switching off and on is no way around a backoff."""
    if enabled == domain.letsencrypt_enabled:
        return domain
    changed = replace(domain, letsencrypt_enabled=enabled)
    if enabled and changed.le_state is LetsEncryptState.DISABLED:
        changed = replace(changed, le_state=LetsEncryptState.PENDING_DNS)
    return settle(changed, now)


def tick(domain: Domain, now: datetime) -> Domain:
    """Time passed: a custom certificate that just expired hands over at once."""
    if (
        domain.serving is Source.CUSTOM
        and not is_valid_at(domain.custom_cert, now)
        and domain.letsencrypt_enabled
        and not _has_usable_le(domain, now)
    ):
        # Once per custom certificate and driven by time alone: not a forced retry.
        domain = replace(domain, retry=replace(domain.retry, next_attempt_at=now))
    return settle(domain, now)


def changed(before: Domain, after: Domain) -> bool:
    """Worth a write: anything but the bookkeeping timestamp moved."""
    return replace(before, updated_at=after.updated_at) != after


def _shown(domain: Domain) -> Domain:
    """The domain as far as a router or a status page acts on it.

    Left out: when things were last looked at and will next be (check and error
    times, the next attempt and run, the last forced retry) and the order in
    which DNS listed its answers. A failure still shows, through its attempt
    count and reason; a new answer, state, certificate or instruction too.
    """
    retry = replace(domain.retry, next_attempt_at=None, last_error_at=None, forced_at=None)
    dns = domain.dns
    if dns is not None:
        dns = replace(
            dns,
            answered=tuple(sorted(dns.answered)),
            expected=tuple(sorted(dns.expected)),
            checked_at=None,
        )
    return replace(domain, retry=retry, dns=dns, next_run_at=None)


def worth_an_event(before: Domain, after: Domain) -> bool:
    """Does ``after`` show anything ``before`` did not? If not, only scheduling times moved."""
    return replace(_shown(before), updated_at=after.updated_at) != _shown(after)
