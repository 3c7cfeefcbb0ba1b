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

The platform's own domains (``is_platform``, ``certbroker.platform``) are
DNS-01 domains without a delegation: the broker writes their challenge values
in the platform's zone itself, so before an order it checks CAA and its own
update rights (``CheckPlatformZone``), and while one rests it re-checks those
rights on the delegation's daily cadence (``RecheckPlatformZone``). Nothing
about them is a customer's to fix: the CA's refusals keep the backoff instead
of turning into an Action required (``refused_for_good``).

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

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from certbroker import tenancy
from certbroker.backoff import retry_delay
from certbroker.dns import CaaReason, CaaResult, DnsResult, to_observation
from certbroker.fixes import ca_refusal
from certbroker.model import (
    CertificateInfo,
    ChallengeType,
    DnsObservation,
    Domain,
    LetsEncryptState,
    RenewalPlan,
    RetryState,
    Source,
)
from certbroker.priorities import spread_renewal

EXPIRING_WINDOW = timedelta(days=14)
#: Default spacing of forced retries of a failing domain (CERTBROKER_FORCED_RETRY_INTERVAL).
FORCED_RETRY_INTERVAL = timedelta(minutes=10)
#: How often a resting DNS-01 domain's delegation is looked at again.
DELEGATION_RECHECK = timedelta(days=1)
#: A setting is missing (``held_until_restart``).
NOT_CONFIGURED = "NOT_CONFIGURED"
#: The CA is unreachable or failing for everyone (``certbroker.ca_health``): held, not failed.
CA_UNAVAILABLE = "CA_UNAVAILABLE"
#: However soon the CA says to ask again, not sooner than this.
RENEWAL_INFO_MIN_WAIT = timedelta(minutes=1)
#: The CA's renewal window could not be fetched: ask again this much later.
RENEWAL_INFO_RETRY = timedelta(hours=1)
#: A certificate is never renewed on the CA's word sooner than this after it arrived: a
#: window already past for a fresh certificate would otherwise renew it again and again.
ARI_MIN_AGE = timedelta(hours=1)
_RESTING = (LetsEncryptState.IN_USE, LetsEncryptState.NOT_USED, LetsEncryptState.DISABLED)


# A certificate fresh from the CA may carry a notBefore a moment ahead of our clock
# (Let's Encrypt backdates by an hour; Pebble does not). Routers install a new
# certificate at once anyway, so a few minutes of skew must not count as "not valid".
CLOCK_SKEW = timedelta(minutes=5)


def is_valid_at(cert: CertificateInfo | None, now: datetime) -> bool:
    return cert is not None and cert.not_before - CLOCK_SKEW <= now < cert.not_after


def cert_renewal_time(cert: CertificateInfo) -> datetime:
    """Two thirds into its life, less a spread per name (``priorities.spread_renewal``:
    a bulk import must not renew all at once); if our clock says we got it later than
    its notBefore, the same into what was left of it then.

    With a CA clock behind ours (or an injected clock ahead), a notBefore-based
    renewal time can already be past when the certificate arrives: the broker
    would renew at once, again and again, until the weekly quota stopped it.
    """
    start = cert.not_before
    if cert.received_at is not None and cert.received_at > start:
        start = min(cert.received_at, cert.not_after)
    return spread_renewal(",".join(sorted(cert.sans)), start, cert.not_after)


def uses_dns01(domain: Domain) -> bool:
    """Validated by DNS-01 through the delegation: every wildcard, and DNS_01 by choice."""
    return domain.challenge is ChallengeType.DNS_01 or domain.is_wildcard


def is_platform(domain: Domain) -> bool:
    """One of the platform's own domains (``certbroker.platform``): DNS-01 in the platform's
    zone, written by the broker itself; no delegation, no customer to ask."""
    return domain.app == tenancy.PLATFORM_APP


def renewal_due(domain: Domain) -> datetime | None:
    """When the Let's Encrypt certificate is renewed: inside the CA's window (ARI), else
    at two thirds of its life; None without a certificate."""
    cert = domain.le_cert
    if cert is None:
        return None
    return domain.renewal.at or cert_renewal_time(cert)


def needs_issuance(domain: Domain, now: datetime) -> bool:
    """A Let's Encrypt order is wanted: none yet, or its renewal time has come."""
    if not domain.letsencrypt_enabled:
        return False
    cert = domain.le_cert
    if cert is None:
        return True
    # A certificate not valid *yet* (the CA's clock is well ahead of ours) is not
    # missing: ordering again would burn the quota; settle schedules a run for it.
    renew_at = renewal_due(domain)
    assert renew_at is not None
    return now >= renew_at or now >= cert.not_after


def held_until_restart(domain: Domain) -> bool:
    """Held until something outside the domain wakes it: a setting is missing (until a
    restart with it), or the CA is unavailable (``held_for_ca``).

    Settings are read once at start, so a timer would only repeat the same
    verdict; the scheduler re-evaluates these domains at every start
    (``Restarted``), and IssueCertificate (retry now) does at once.
    """
    if held_for_ca(domain):
        return True
    return domain.retry.last_error_reason == NOT_CONFIGURED and domain.retry.next_attempt_at is None


def held_for_ca(domain: Domain) -> bool:
    """Held for a CA outage until the scheduler's probe finds the CA back (``CaAvailable``),
    a restart (``Restarted``) or a retry-now, each of which clears the reason.

    A CA outage has one shared probe (``ca_health``), not a timer per domain: the
    domain is never due on its own, and ``next_attempt_at`` only shows when the
    next probe runs (moved at each failed probe by ``CaStillUnavailable``, in the
    scheduling columns alone: no event per probe).
    """
    return domain.retry.last_error_reason == CA_UNAVAILABLE


def is_due_for_order(domain: Domain, now: datetime) -> bool:
    """Wanted and not held back by backoff, the 60-second DNS cadence or a quota."""
    next_attempt = domain.retry.next_attempt_at
    return (
        needs_issuance(domain, now)
        and not held_until_restart(domain)
        and (next_attempt is None or next_attempt <= now)
    )


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
    renew_at = renewal_due(domain)
    if renew_at is not None:
        check = min(check, max(now, renew_at))
    return check


def is_due_for_renewal_info(domain: Domain, now: datetime) -> bool:
    """A valid certificate whose CA window (ARI) is to be fetched again now.

    Never after the certificate expired (RFC 9773 §4.3), nor once its renewal
    has started.
    """
    cert = domain.le_cert
    check = domain.renewal.next_check
    return (
        domain.letsencrypt_enabled
        and cert is not None
        and now < cert.not_after
        and check is not None
        and check <= now
        and not needs_issuance(domain, now)
    )


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
            if not held_until_restart(domain):
                times.append(domain.retry.next_attempt_at or now)
        elif le_cert is not None:
            renew_at = renewal_due(domain)
            assert renew_at is not None
            times.append(renew_at)
            if uses_dns01(domain) and domain.retry.next_attempt_at is not None:
                times.append(domain.retry.next_attempt_at)  # the delegation check
            if domain.renewal.next_check is not None and now < le_cert.not_after:
                times.append(domain.renewal.next_check)  # the CA's window, again
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
    An instruction from an earlier CAA or CA refusal no longer applies: the
    name does not reach us at all, which Pending DNS says.
    """
    state = domain.le_state if _has_usable_le(domain, now) else LetsEncryptState.PENDING_DNS
    retry = replace(
        domain.retry,
        next_attempt_at=now + interval,
        last_error_reason=reason,
        last_error_message=message,
        last_error_at=now,
    )
    return settle(
        replace(domain, le_state=state, dns=observation, retry=retry, action_required=""), now
    )


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
    """A quota is used up: wait for its next free slot without counting a failure.

    DNS and CAA passed, so the domain is *Creating* (unless a certificate still
    serves): the reason and the next slot's time say what it waits for.
    """
    retry = replace(
        domain.retry,
        next_attempt_at=until,
        last_error_reason=reason,
        last_error_message=message,
        last_error_at=now,
    )
    state = domain.le_state if _has_usable_le(domain, now) else LetsEncryptState.CREATING
    return settle(replace(domain, retry=retry, le_state=state, action_required=""), now)


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
    # forced_at stays: a forced renewal that succeeds must not refill the allowance at once.
    kept = RetryState(forced_at=domain.retry.forced_at)
    done = replace(domain, le_cert=cert, retry=kept, action_required="", renewal=RenewalPlan())
    if uses_dns01(done):
        check = _next_delegation_check(done, now)
        done = replace(done, retry=replace(kept, next_attempt_at=check))
    return settle(done, now)


def backing_off(domain: Domain, now: datetime) -> bool:
    """An attempt failed and the next one waits: forcing it would cost the CA's quotas."""
    next_attempt = domain.retry.next_attempt_at
    return (
        domain.retry.attempt > 0
        and next_attempt is not None
        and next_attempt > now
        and needs_issuance(domain, now)
        and not held_for_ca(domain)  # its time is the CA's next probe, not a backoff
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
    retry = _unheld(domain.retry, now)
    if backing_off(domain, now):
        retry = replace(retry, forced_at=now)
    return settle(replace(domain, retry=retry), now)


def forced_renewal_wait(domain: Domain, now: datetime, interval: timedelta) -> timedelta | None:
    """How long until a forced renewal (IssueCertificate ``renew``) is allowed; None: now.

    Unlike a forced retry this does not need a backoff: every forced renewal is
    an order the CA counts, so any forced retry or renewal within ``interval``
    holds the next one back.
    """
    forced = domain.retry.forced_at
    if forced is None or forced + interval <= now:
        return None
    return forced + interval - now


def renew_now(domain: Domain, now: datetime) -> Domain:
    """Make the current Let's Encrypt certificate's renewal due now (it keeps serving).

    The renewal time is the ARI plan's ``at`` column, so a restart keeps the
    request; ``forced_at`` rations the next one (``forced_renewal_wait``).
    The caller checks that a certificate exists and the renewal is not due yet.
    """
    renewal = replace(domain.renewal, at=now)
    retry = replace(domain.retry, next_attempt_at=now, forced_at=now)
    return settle(replace(domain, renewal=renewal, retry=retry), now)


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
        and not held_for_ca(domain)  # the probe wakes it; its time stays the probe's
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
    renewal = replace(domain.renewal, next_check=None)
    dns = domain.dns
    if dns is not None:
        dns = replace(
            dns,
            answered=tuple(sorted(dns.answered)),
            expected=tuple(sorted(dns.expected)),
            checked_at=None,
        )
    return replace(domain, retry=retry, dns=dns, renewal=renewal, next_run_at=None)


def worth_an_event(before: Domain, after: Domain) -> bool:
    """Does ``after`` show anything ``before`` did not? If not, only scheduling times moved."""
    return replace(_shown(before), updated_at=after.updated_at) != _shown(after)


# ---------------------------------------------------------------------------------------
# The switch: what to observe next (``next_action``) and what an observation means (``apply``)


@dataclass(frozen=True)
class Rules:
    """The knobs the decisions use (from Settings)."""

    dns_check_interval: timedelta = timedelta(seconds=60)
    caa_identity: str = "letsencrypt.org"


@dataclass(frozen=True)
class Setup:
    """What this broker is configured to do; fixed for the life of the process."""

    acme: bool = True  # CERTBROKER_ACME_DIRECTORY
    http01: bool = True  # CERTBROKER_PLATFORM_TARGETS (to judge where DNS points)
    dns01: bool = False  # CERTBROKER_DNS01_ZONE, _SERVER and _TSIG_KEY
    platform_dns01: bool = False  # CERTBROKER_DNS01_SERVER and _TSIG_KEY: the platform's zone


# -- actions: each is one observe function in the scheduler, then one write ------------


@dataclass(frozen=True)
class Rest:
    """Nothing to observe now (time may still have moved something: ``Ticked``)."""


@dataclass(frozen=True)
class HoldNotConfigured:
    """The domain needs a setting this broker lacks (``missing`` names it)."""

    missing: str


@dataclass(frozen=True)
class CheckDns:
    """HTTP-01 before an order: does DNS point at the platform, does CAA allow our CA?"""


@dataclass(frozen=True)
class CheckDelegation:
    """DNS-01 before an order: the delegation, CAA, and our own update rights."""


@dataclass(frozen=True)
class RecheckDelegation:
    """A resting DNS-01 domain's periodic look at its delegation."""


@dataclass(frozen=True)
class CheckPlatformZone:
    """The platform's own domain before an order: CAA and our update rights in its zone."""


@dataclass(frozen=True)
class RecheckPlatformZone:
    """A resting platform domain's periodic look at our update rights in its zone."""


@dataclass(frozen=True)
class PlaceOrder:
    """An order row exists (reserved, maybe at the CA already): take it to a certificate."""


@dataclass(frozen=True)
class FetchRenewalInfo:
    """Ask the CA for the current certificate's renewal window (ARI)."""


Action = (
    Rest
    | HoldNotConfigured
    | CheckDns
    | CheckDelegation
    | RecheckDelegation
    | CheckPlatformZone
    | RecheckPlatformZone
    | PlaceOrder
    | FetchRenewalInfo
)


_PLATFORM_DNS01 = (
    "CERTBROKER_DNS01_SERVER and CERTBROKER_DNS01_TSIG_KEY (needed for the platform's domains)"
)


def missing_setting(domain: Domain, setup: Setup) -> str:
    """The setting an order for ``domain`` needs and this broker lacks, or ""."""
    if not setup.acme:
        return "CERTBROKER_ACME_DIRECTORY"
    if is_platform(domain):
        if not setup.platform_dns01:
            return _PLATFORM_DNS01
        return ""
    if uses_dns01(domain) and not setup.dns01:
        return "CERTBROKER_DNS01_ZONE (needed for wildcards and DNS-01)"
    if not uses_dns01(domain) and not setup.http01:
        return "CERTBROKER_PLATFORM_TARGETS"
    return ""


def next_action(domain: Domain, now: datetime, setup: Setup, *, order_pending: bool) -> Action:
    """What the scheduler should observe for ``domain`` now (after ``Ticked``)."""
    if is_due_for_order(domain, now):
        missing = missing_setting(domain, setup)
        if missing:
            return HoldNotConfigured(missing)
        if order_pending:
            return PlaceOrder()  # a crash or a reservation left it: continue, never re-check
        if is_platform(domain):
            return CheckPlatformZone()
        return CheckDelegation() if uses_dns01(domain) else CheckDns()
    if is_due_for_delegation_check(domain, now):
        if is_platform(domain):
            if not setup.platform_dns01:
                return HoldNotConfigured(_PLATFORM_DNS01)
            return RecheckPlatformZone()
        if not setup.dns01:
            return HoldNotConfigured("CERTBROKER_DNS01_ZONE (needed to check the delegation)")
        return RecheckDelegation()
    if setup.acme and is_due_for_renewal_info(domain, now):
        return FetchRenewalInfo()
    return Rest()


# -- observations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticked:
    """Time passed (a custom certificate may have expired)."""


@dataclass(frozen=True)
class Restarted:
    """The broker started: its settings may have changed since a NOT_CONFIGURED hold."""


@dataclass(frozen=True)
class NotConfigured:
    missing: str


@dataclass(frozen=True)
class CaUnavailable:
    """The CA is down for everyone: held (state and attempt unchanged) until it is back.

    ``reason``/``detail``: the failure that showed it (in the message, written
    once); ``next_probe``: when the shared probe runs next (``next_attempt_at``).
    """

    reason: str
    detail: str
    next_probe: datetime


@dataclass(frozen=True)
class CaStillUnavailable:
    """A probe found the CA still down: a domain held for it shows the next probe's time
    (a scheduling change only, written without an event)."""

    next_probe: datetime


@dataclass(frozen=True)
class CaAvailable:
    """The CA answers again: a domain held for it is due at once."""


@dataclass(frozen=True)
class DnsChecked:
    result: DnsResult


@dataclass(frozen=True)
class CaaChecked:
    result: CaaResult


@dataclass(frozen=True)
class DelegationChecked:
    """``ok``, or else the record to create (``record``) and why (``reason``, ``message``)."""

    ok: bool
    reason: str = ""
    message: str = ""
    record: str = ""


@dataclass(frozen=True)
class DelegationUnknown:
    """The DNS could not tell (timeout, SERVFAIL)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Dns01AccessFailed:
    """Our TSIG key may not update the delegation's record: the operator's to fix."""

    reason: str
    message: str


@dataclass(frozen=True)
class PlatformZoneChecked:
    """A resting platform domain: may our key still write its ``_acme-challenge`` name?
    ``ok``, or why not (``reason``, ``message``: the update's refusal or failure)."""

    ok: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class ChecksPassed:
    """Every check before an order passed."""


@dataclass(frozen=True)
class QuotaHeld:
    """A limit (the ledger's, mirroring the CA's) holds the order until ``until``."""

    reason: str
    message: str
    until: datetime


@dataclass(frozen=True)
class OrderStarted:
    """The order is reserved and persisted; the CA hears of it next."""


@dataclass(frozen=True)
class OrderFailed:
    """The CA (or the way to it) failed the order; ``retryable`` is ``acme.problems``' verdict."""

    reason: str
    message: str
    retryable: bool
    retry_after: timedelta | None = None
    rate_limit_scope: str = ""
    failed_authorizations: int = 0


@dataclass(frozen=True)
class CertificateIssued:
    """``ari``: the CA publishes renewal windows (fetch this certificate's next)."""

    cert: CertificateInfo
    ari: bool = False


@dataclass(frozen=True)
class RenewalInfoFetched:
    """The CA's window; ``pick`` in [0, 1) places our renewal time in it (random, injected)."""

    start: datetime
    end: datetime
    retry_after: timedelta
    pick: float


@dataclass(frozen=True)
class StepCrashed:
    """The step failed in a way nobody foresaw (a bug): recorded like a failed try."""

    kind: str


@dataclass(frozen=True)
class RenewalInfoUnavailable:
    """No window: the CA offers no ARI (``offered`` False) or did not answer."""

    offered: bool
    message: str = ""


Observation = (
    Ticked
    | Restarted
    | NotConfigured
    | CaUnavailable
    | CaStillUnavailable
    | CaAvailable
    | DnsChecked
    | CaaChecked
    | DelegationChecked
    | DelegationUnknown
    | Dns01AccessFailed
    | PlatformZoneChecked
    | ChecksPassed
    | QuotaHeld
    | OrderStarted
    | OrderFailed
    | CertificateIssued
    | RenewalInfoFetched
    | RenewalInfoUnavailable
    | StepCrashed
)

#: Validation failures that, repeated while DNS points at us, are not going away by waiting.
_VALIDATION_REFUSALS = frozenset({"ACME_UNAUTHORIZED", "ACME_INCORRECT_RESPONSE"})
#: The broker's own DNS-01 updates failing: the operator's key or zone, not the customer.
_OPERATOR_PREFIX = "DNS01_"


def apply(
    domain: Domain, observation: Observation, now: datetime, rules: Rules = Rules()
) -> Domain:
    """The one switch: what ``observation`` means for ``domain`` at ``now``."""
    interval = rules.dns_check_interval
    match observation:
        case Ticked():
            return tick(domain, now)
        case Restarted():
            return released(domain, now)
        case NotConfigured(missing):
            return not_configured(domain, missing, now)
        case CaUnavailable(reason, detail, next_probe):
            return ca_unavailable(domain, reason, detail, next_probe, now)
        case CaStillUnavailable(next_probe):
            return ca_probe_rescheduled(domain, next_probe, now)
        case CaAvailable():
            return released(domain, now, CA_UNAVAILABLE)
        case DnsChecked(result) if not result.points:
            observed = to_observation(result, now)
            return dns_not_ready(domain, observed, result.reason, result.message, now, interval)
        case DnsChecked(result):
            state = domain.le_state
            if state is LetsEncryptState.PENDING_DNS:
                state = LetsEncryptState.CREATING  # DNS is fine: no longer Pending DNS
            return settle(replace(domain, dns=to_observation(result, now), le_state=state), now)
        case CaaChecked(result) if result.allowed:
            return caa_allowed(domain, now)
        case CaaChecked(result) if result.reason == CaaReason.FORBIDS:
            fix = result.fix or result.message
            return action_required(
                domain, fix, now, interval, reason=result.reason, message=result.message
            )
        case CaaChecked(result):  # the lookup failed: Let's Encrypt would refuse too
            return failed(_creating(domain), result.reason, result.message, now)
        case DelegationChecked(ok=True) if needs_issuance(domain, now):
            return delegated(domain, now)
        case DelegationChecked(ok=True):
            return delegation_confirmed(domain, now)
        case DelegationChecked(reason=reason, message=message, record=record):
            return action_required(domain, record, now, interval, reason=reason, message=message)
        case DelegationUnknown(reason, message):
            return delegation_check_failed(domain, reason, message, now, interval)
        case Dns01AccessFailed(reason, message):
            return failed(delegated(domain, now), reason, message, now)
        case PlatformZoneChecked(ok=True):
            return delegation_confirmed(domain, now)  # the next look in a day
        case PlatformZoneChecked(reason=reason, message=message):
            return delegation_check_failed(domain, reason, message, now, interval)
        case ChecksPassed():
            return checks_passed(domain, now, interval)
        case QuotaHeld(reason, message, until):
            return held_back(domain, reason, message, until, now)
        case OrderStarted():
            return order_started(domain, now)
        case OrderFailed() as failure if refused_for_good(domain, failure):
            return refused(domain, failure, now, rules)
        case OrderFailed(reason, message, _, retry_after):
            # The checks had passed and the CA may say yes next time: Creating, with backoff.
            fresh = replace(domain, action_required="")
            return failed(fresh, reason, message, now, retry_after, LetsEncryptState.CREATING)
        case CertificateIssued(cert, ari):
            done = issued(domain, cert, now)
            return settle(replace(done, renewal=RenewalPlan(next_check=now if ari else None)), now)
        case RenewalInfoFetched(start, end, retry_after, pick):
            return renewal_window(domain, start, end, retry_after, pick, now)
        case RenewalInfoUnavailable(offered=False):
            return settle(replace(domain, renewal=RenewalPlan()), now)
        case RenewalInfoUnavailable():
            later = replace(domain.renewal, next_check=now + RENEWAL_INFO_RETRY)
            return settle(replace(domain, renewal=later), now)
        case StepCrashed(kind):
            return failed(domain, "INTERNAL", f"internal error ({kind})", now)
    raise AssertionError(f"unhandled observation {observation!r}")  # pragma: no cover


def _creating(domain: Domain) -> Domain:
    if domain.le_state is LetsEncryptState.PENDING_DNS:
        return replace(domain, le_state=LetsEncryptState.CREATING)
    return domain


def released(domain: Domain, now: datetime, reason: str = "") -> Domain:
    """A hold ends (``held_until_restart``; only the one for ``reason``, if given): the
    domain is due at once. A CA hold's reason goes too (it is what holds the domain,
    and the CA's outage is no longer what the domain waits for); the attempt count stays.
    """
    if not held_until_restart(domain) or reason not in ("", domain.retry.last_error_reason):
        return domain
    return settle(replace(domain, retry=_unheld(domain.retry, now)), now)


def _unheld(retry: RetryState, now: datetime) -> RetryState:
    """Due at ``now``; a CA hold's reason and message cleared (``held_for_ca``)."""
    retry = replace(retry, next_attempt_at=now)
    if retry.last_error_reason == CA_UNAVAILABLE:
        retry = replace(retry, last_error_reason="", last_error_message="")
    return retry


def not_configured(domain: Domain, missing: str, now: datetime) -> Domain:
    """Held until the broker restarts with ``missing`` set (``held_until_restart``)."""
    retry = replace(
        domain.retry,
        next_attempt_at=None,
        last_error_reason=NOT_CONFIGURED,
        last_error_message=(
            f"{missing} is not set: the broker cannot order certificates; "
            "set it and restart the broker"
        ),
        last_error_at=now,
    )
    return settle(replace(domain, retry=retry), now)


def ca_unavailable(
    domain: Domain, reason: str, detail: str, next_probe: datetime, now: datetime
) -> Domain:
    """Held for a CA-wide outage: no attempt counted, the state kept, woken by the probe.

    ``next_attempt_at`` is the next probe (honest, and moved at each failed probe by
    ``ca_probe_rescheduled``); the message says what the time is, not the time itself,
    so that moving it stays a scheduling-only write.
    """
    retry = replace(
        domain.retry,
        next_attempt_at=next_probe,
        last_error_reason=CA_UNAVAILABLE,
        last_error_message=(
            f"the CA is unavailable ({reason}: {detail}); orders are paused for every "
            "domain and resume when it answers (next_attempt_time: the next probe)"
        ),
        last_error_at=now,
    )
    return settle(replace(domain, retry=retry), now)


def ca_probe_rescheduled(domain: Domain, next_probe: datetime, now: datetime) -> Domain:
    """A domain held for the CA shows the next probe's time; any other is left alone."""
    if not held_for_ca(domain) or domain.retry.next_attempt_at == next_probe:
        return domain
    return settle(replace(domain, retry=replace(domain.retry, next_attempt_at=next_probe)), now)


def caa_allowed(domain: Domain, now: datetime) -> Domain:
    """CAA allows us: an Action required for CAA is over by itself (the re-check passed)."""
    if domain.retry.last_error_reason != CaaReason.FORBIDS or not domain.action_required:
        return _creating(domain)
    state = domain.le_state
    if state is LetsEncryptState.ACTION_REQUIRED:
        state = LetsEncryptState.CREATING
    return settle(replace(domain, le_state=state, action_required=""), now)


def refused_by_ca(domain: Domain) -> bool:
    """Action required after the CA refused for good (not a local check's finding)."""
    return bool(domain.action_required) and domain.retry.last_error_reason.startswith("ACME_")


def ca_ready_at(domain: Domain) -> datetime | None:
    """After a CA refusal, the CA hears of the domain again only with the usual backoff."""
    if not refused_by_ca(domain) or domain.retry.last_error_at is None:
        return None
    return domain.retry.last_error_at + retry_delay(domain.retry.attempt)


def checks_passed(domain: Domain, now: datetime, interval: timedelta) -> Domain:
    """The local checks pass. After a CA refusal they run every ``interval`` (the state
    shows what to fix), but the order waits for the backoff: the CA said no, and only a
    change we cannot see may have fixed it."""
    ready = ca_ready_at(domain)
    if ready is None or ready <= now:
        return domain
    later = replace(domain.retry, next_attempt_at=min(now + interval, ready))
    return settle(replace(domain, retry=later), now)


def dns_confirmed(domain: Domain) -> bool:
    """The name reaches us: DNS-01 domains order only once their delegation is confirmed."""
    return uses_dns01(domain) or (domain.dns is not None and domain.dns.points_to_platform)


def refused_for_good(domain: Domain, failure: OrderFailed) -> bool:
    """Waiting will not help: a terminal verdict, or a validation refusal repeated while
    DNS points at the platform. The broker's own DNS-01 updates are the operator's, and so
    is everything about the platform's own domains: no customer can act, so they keep the
    backoff (the reason in ``retry``) rather than an Action required."""
    if failure.reason.startswith(_OPERATOR_PREFIX) or is_platform(domain):
        return False
    if not failure.retryable:
        return True
    return (
        failure.reason in _VALIDATION_REFUSALS
        and domain.retry.attempt >= 1
        and domain.retry.last_error_reason == failure.reason
        and dns_confirmed(domain)
    )


def refused(domain: Domain, failure: OrderFailed, now: datetime, rules: Rules) -> Domain:
    """ACTION_REQUIRED with the fix; the local checks again every ``dns_check_interval``.

    Counted as a failed attempt, so the next order waits for the usual backoff
    (``ca_ready_at``) even while the local re-checks pass.
    """
    fix = ca_refusal(
        domain.name,
        failure.reason,
        failure.message,
        rules.caa_identity,
        dns01=uses_dns01(domain),
        base=domain.name.removeprefix("*."),
    )
    retry = replace(
        domain.retry,
        attempt=domain.retry.attempt + 1,
        next_attempt_at=now + rules.dns_check_interval,
        last_error_reason=failure.reason,
        last_error_message=failure.message,
        last_error_at=now,
    )
    state = domain.le_state if _has_usable_le(domain, now) else LetsEncryptState.ACTION_REQUIRED
    return settle(replace(domain, le_state=state, action_required=fix, retry=retry), now)


def renewal_window(
    domain: Domain,
    start: datetime,
    end: datetime,
    retry_after: timedelta,
    pick: float,
    now: datetime,
) -> Domain:
    """Renew at a time inside the CA's window; keep the one picked while it stays inside
    (a re-fetch that finds the same window changes nothing a watcher sees)."""
    at = domain.renewal.at
    if at is None or not start <= at <= end:
        at = start + (end - start) * min(max(pick, 0.0), 1.0)
    cert = domain.le_cert
    if cert is not None:  # a CA that asks to replace what it just issued must not loop us
        at = max(at, (cert.received_at or cert.not_before) + ARI_MIN_AGE)
    again = now + max(retry_after, RENEWAL_INFO_MIN_WAIT)  # a Retry-After of 0 must not spin
    return settle(replace(domain, renewal=RenewalPlan(at=at, next_check=again)), now)
