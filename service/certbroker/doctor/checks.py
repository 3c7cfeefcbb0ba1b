"""The doctor's checks, one function each: facts in, a ``Check`` in plain words out.

Each asks the same collaborators the scheduler asks before it orders (DNS
and CAA through ``DnsChecker``, the DNS-01 delegation and update rights, the
quota counted from the store), so "the doctor says OK" means "the scheduler's
pre-flight would pass". Nothing here writes: the store is only read, and the
one side effect, the HTTP-01 probe's token, is withdrawn by the probe itself.
Each returns a ``Check`` named as in ``CheckDomainResponse``'s documentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from certbroker import delegation, lifecycle, platform, tenancy
from certbroker.acme.http01 import PREFIX
from certbroker.acme.http01_probe import MAX_ADDRESSES, Fetch, IPAddress
from certbroker.acme.problems import AcmeProblem
from certbroker.dns import (
    CaaReason,
    CaaResult,
    DnsLookupError,
    DnsReason,
    DnsResult,
    PlatformTargets,
)
from certbroker.doctor.report import Check, Verdict
from certbroker.doctor.schedule import next_action
from certbroker.errors import FailedPrecondition
from certbroker.limits import Limits, LimitsLedger, OrderRequest
from certbroker.model import Domain, LetsEncryptState
from certbroker.names import registered_domain
from certbroker.ports import Dns01Access
from certbroker.store.base import LimitReads, PendingOrder

_STATE_WORDS = {
    LetsEncryptState.PENDING_DNS: "Pending DNS",
    LetsEncryptState.CREATING: "Creating",
    LetsEncryptState.IN_USE: "In use",
    LetsEncryptState.NOT_USED: "Not used",
    LetsEncryptState.ACTION_REQUIRED: "Action required",
    LetsEncryptState.DISABLED: "Disabled",
}
#: Pointing failures the customer fixes with records (not DNS outages).
_RECORD_PROBLEMS = frozenset(
    {DnsReason.NOT_POINTING, DnsReason.NO_RECORDS, DnsReason.NXDOMAIN, DnsReason.STRAY_AAAA}
)


class DoctorDns(Protocol):
    async def points_to_platform(self, name: str, targets: PlatformTargets) -> DnsResult: ...

    async def caa_allows(self, name: str, ca_identity: str, *, wildcard: bool) -> CaaResult: ...

    async def cname_target(self, name: str) -> str | None: ...


class Probe(Protocol):
    """``certbroker.acme.http01_probe.Http01Probe``."""

    port: int

    async def probe(self, name: str) -> tuple[tuple[IPAddress, ...], list[Fetch]]: ...


class DoctorStore(LimitReads, Protocol):
    async def get_domain(self, name: str) -> Domain | None: ...

    async def get_order(self, domain: str) -> PendingOrder | None: ...


@dataclass(frozen=True)
class Subject:
    """The domain as stored, or as it would be added (``known`` False), and the asking app."""

    domain: Domain
    known: bool
    app: str

    @property
    def name(self) -> str:
        return self.domain.name

    @property
    def dns01(self) -> bool:
        return lifecycle.uses_dns01(self.domain)

    @property
    def platform(self) -> bool:
        """One of the platform's own domains (``certbroker.platform``): no delegation."""
        return platform.is_platform(self.domain)


# --------------------------------------------------------------------------- ownership


async def ownership(
    store: DoctorStore, subject: Subject, rules: platform.Platform | None = None
) -> Check:
    """Who owns the name, whether Let's Encrypt is on, and whether ``app`` may add it."""
    name, app, domain = subject.name, subject.app, subject.domain
    if subject.known and subject.platform:
        return _platform_ownership(subject, rules or platform.Platform())
    if not subject.known and rules is not None:
        try:
            rules.check_claim(tenancy.Claim(name))
        except FailedPrecondition as refused:
            return Check("ownership", Verdict.FAIL, refused.message)
    if subject.known:
        if app and domain.app != app:  # never name the owner to another tenant
            return Check(
                "ownership",
                Verdict.FAIL,
                f"{name} belongs to another app",
                fix=f"check the name: app {app} cannot manage {name}",
            )
        state = _STATE_WORDS[domain.le_state]
        if not domain.letsencrypt_enabled:
            return Check(
                "ownership",
                Verdict.FAIL,
                f"{name} belongs to app {domain.app}, and Let's Encrypt is disabled for it "
                "(--no-letsencrypt): the broker never orders for it",
                detail=f"state: {state}",
                fix=f"certbroker domains-add {name} --app {domain.app}   (turns it back on)",
            )
        return Check(
            "ownership",
            Verdict.OK,
            f"{name} belongs to app {domain.app}; Let's Encrypt state: {state}",
            detail=f"state: {state}\nchallenge: {'DNS-01' if subject.dns01 else 'HTTP-01'}",
        )
    if not app:
        return Check(
            "ownership",
            Verdict.OK,
            f"{name} is not added to the broker yet; the checks ran as if it were",
            detail="give the app (--app) to check whether it may add the name",
        )
    # The rows found by name; a wildcard's rows *below* its base need a search the
    # store offers only inside a write transaction, which a read-only run never opens:
    # IssueCertificate checks those when the name is added.
    names, _ = tenancy.neighbours(tenancy.Claim(name))
    rows = [row for row in [await store.get_domain(n) for n in names] if row is not None]
    try:
        tenancy.check_family(tenancy.Claim(name), app, rows)
    except FailedPrecondition as refused:
        return Check("ownership", Verdict.FAIL, refused.message)
    return Check(
        "ownership",
        Verdict.OK,
        f"{name} is not added to the broker yet; app {app} may add it",
        detail=f"add it with: certbroker domains-add {name} --app {app}",
    )


def _platform_ownership(subject: Subject, rules: platform.Platform) -> Check:
    name = subject.name
    if rules.get(name) is None:
        return Check(
            "ownership",
            Verdict.FAIL,
            f"{name} was one of the platform's own domains and is retired (no longer in "
            "CERTBROKER_PLATFORM_DOMAINS): it is not renewed",
            fix="add it back to CERTBROKER_PLATFORM_DOMAINS, or remove it with the admin role",
        )
    if subject.app:
        return Check(
            "ownership",
            Verdict.FAIL,
            f"{name} is the platform's own domain: no app manages it",
            fix="check the name; the platform's domains change through the broker's "
            "configuration (CERTBROKER_PLATFORM_DOMAINS)",
        )
    return Check(
        "ownership",
        Verdict.OK,
        f"{name} is the platform's own domain (CERTBROKER_PLATFORM_DOMAINS); Let's Encrypt "
        f"state: {_STATE_WORDS[subject.domain.le_state]}",
        detail="owned by no app; issued and renewed over DNS-01 in the platform's zone",
    )


# --------------------------------------------------------------------------- configuration


def configuration(
    subject: Subject,
    acme_directory: str,
    targets: PlatformTargets | None,
    dns01: Dns01Access | None,
) -> Check:
    """Can this broker order for this domain at all (CA, targets, DNS-01 zone)?"""
    missing: list[str] = []
    if not acme_directory:
        missing.append("CERTBROKER_ACME_DIRECTORY is off: the broker has no CA to order from")
    if subject.platform and dns01 is None:
        missing.append(
            "CERTBROKER_DNS01_SERVER and _TSIG_KEY are not set: the platform's domains "
            "cannot be validated"
        )
    elif subject.dns01 and not subject.platform and (dns01 is None or not dns01.zone):
        missing.append(
            "CERTBROKER_DNS01_ZONE, _SERVER and _TSIG_KEY are not set: wildcards and "
            "DNS-01 domains cannot be validated"
        )
    if not subject.dns01 and targets is None:
        missing.append(
            "CERTBROKER_PLATFORM_TARGETS is not set: the broker cannot tell whether the "
            "domain points at the platform"
        )
    challenge = "DNS-01 through the delegation" if subject.dns01 else "HTTP-01"
    if subject.platform:
        challenge = "DNS-01 in the platform's zone"
    facts = [f"ACME directory: {acme_directory or 'off'}", f"challenge: {challenge}"]
    if targets is not None:
        facts.append(f"platform targets: {targets.describe()}")
    if dns01 is not None and dns01.zone:
        facts.append(f"DNS-01 zone: {dns01.zone}")
    if missing:
        return Check(
            "configuration",
            Verdict.FAIL,
            missing[0],
            detail="\n".join([*missing[1:], *facts]),
            fix="set the variables named above and restart the broker",
        )
    return Check(
        "configuration",
        Verdict.OK,
        f"the broker can order for {subject.name} ({challenge})",
        detail="\n".join(facts),
    )


# --------------------------------------------------------------------------- DNS


def _pointing_fix(checked: str, expected: Sequence[str]) -> str:
    records = "\n".join(f"{checked}. {record}" for record in expected)
    return f"one of these records (and no other A or AAAA record):\n{records}"


async def pointing(dns: DoctorDns, targets: PlatformTargets | None, subject: Subject) -> Check:
    """DNS answered vs expected: A, AAAA and the CNAME chain."""
    if targets is None:
        return Check("dns", Verdict.SKIPPED, "no platform targets are configured")
    result = await dns.points_to_platform(subject.name, targets)
    detail = (
        f"answered: {', '.join(result.answered) or 'nothing'}\n"
        f"expected: {' or '.join(result.expected)}"
    )
    if result.points:
        return Check("dns", Verdict.OK, result.message, detail)
    fix = (
        _pointing_fix(result.checked, result.expected) if result.reason in _RECORD_PROBLEMS else ""
    )
    if subject.dns01:
        return Check(
            "dns",
            Verdict.WARN,
            f"{result.message} (DNS-01 validation does not need it, but visitors will not "
            "reach the platform)",
            detail,
            fix,
        )
    return Check("dns", Verdict.FAIL, result.message, detail, fix)


async def caa(dns: DoctorDns, ca_identity: str, subject: Subject) -> Check:
    """The CAA verdict and the record that decides it (RFC 8659 tree climb)."""
    result = await dns.caa_allows(subject.name, ca_identity, wildcard=subject.domain.is_wildcard)
    if result.allowed:
        detail = (
            f"deciding record: {result.record}"
            if result.record
            else "no CAA record on the name or any parent: every CA may issue"
        )
        return Check("caa", Verdict.OK, result.message, detail)
    if result.reason is CaaReason.FORBIDS:
        return Check(
            "caa",
            Verdict.FAIL,
            f"CAA at {result.at} forbids {ca_identity} from issuing for {subject.name}",
            detail=f"deciding record: {result.record}\n{result.message}",
            fix=result.fix,
        )
    return Check("caa", Verdict.FAIL, result.message, detail=f"lookup at {result.at} failed")


async def dns01_delegation(
    dns: DoctorDns,
    dns01: Dns01Access | None,
    labels: delegation.LabelKey | None,
    subject: Subject,
) -> Check:
    """For DNS-01 domains: is ``_acme-challenge`` delegated to this domain's record?"""
    name = "dns01_delegation"
    if not subject.dns01:
        return Check(name, Verdict.SKIPPED, "validated by HTTP-01: no delegation is needed")
    if subject.platform and dns01 is not None:
        return await _platform_access(dns01, subject)
    if dns01 is None or not dns01.zone:
        return Check(name, Verdict.SKIPPED, "the broker has no DNS-01 zone (see configuration)")
    label = subject.domain.delegation_label
    if not label and subject.app and labels is not None:
        label = labels.label(subject.app, subject.name)  # what adding it would store
    if not label:
        return Check(
            name,
            Verdict.WARN,
            "the record to create depends on the app: give --app to check the delegation",
        )
    challenge = delegation.challenge_name(subject.name)
    expected = delegation.record(subject.name, label, dns01.zone)
    try:
        found = await dns.cname_target(challenge)
    except DnsLookupError as error:
        return Check(name, Verdict.FAIL, error.message, detail=f"expected: {expected}")
    shown = f"{challenge}. CNAME {found}." if found else f"no CNAME at {challenge}"
    detail = f"expected: {expected}\nfound: {shown}"
    if found != delegation.target(label, dns01.zone):
        summary = delegation.finding(subject.name, dns01.zone, found)
        return Check(name, Verdict.FAIL, summary, detail, expected)
    try:
        await dns01.check_access(label)
    except AcmeProblem as problem:
        return Check(
            name,
            Verdict.FAIL,
            f"{challenge} is delegated, but the broker may not update its record: "
            f"{problem.detail or problem.reason}",
            detail,
            "give the broker's TSIG key update rights on its DNS-01 zone",
        )
    return Check(
        name,
        Verdict.OK,
        f"{challenge} is delegated to the broker, which may update the record",
        detail,
    )


async def _platform_access(dns01: Dns01Access, subject: Subject) -> Check:
    """A platform domain needs no delegation: may the broker write its challenge name?"""
    name = "dns01_delegation"
    challenge = delegation.challenge_name(subject.name)
    try:
        await dns01.check_access(challenge)
    except AcmeProblem as problem:
        return Check(
            name,
            Verdict.FAIL,
            f"the broker may not write {challenge} in the platform's zone: "
            f"{problem.detail or problem.reason}",
            fix=f"give the broker's TSIG key update rights for TXT records at {challenge}",
        )
    return Check(
        name,
        Verdict.OK,
        f"no delegation needed: the broker writes {challenge} in the platform's zone, and may",
    )


# --------------------------------------------------------------------------- HTTP-01


async def http01_probe(probe: Probe | None, subject: Subject) -> Check:
    """Fetch a fresh token through the real path (DNS, routers, the broker's responder)."""
    name = "http01_probe"
    if subject.dns01:
        return Check(name, Verdict.SKIPPED, "validated by DNS-01: no HTTP request is made")
    if probe is None:
        return Check(name, Verdict.SKIPPED, "the self-probe is not configured")
    try:
        addresses, fetches = await probe.probe(subject.name)
    except DnsLookupError as error:
        return Check(name, Verdict.FAIL, f"cannot resolve {subject.name}: {error.message}")
    if not addresses:
        return Check(
            name,
            Verdict.FAIL,
            f"{subject.name} has no A or AAAA record: nothing to probe",
            fix=f"point {subject.name} at the platform (see the dns check)",
        )
    lines = [f"GET {fetches[0].url}", *(f"from {fetch.describe()}" for fetch in fetches)]
    if len(addresses) > MAX_ADDRESSES:
        lines.append(f"only the first {MAX_ADDRESSES} of {len(addresses)} addresses were probed")
    detail = "\n".join(lines)
    where = f"http://{subject.name}{'' if probe.port == 80 else f':{probe.port}'}{PREFIX}"
    if all(fetch.ok for fetch in fetches):
        return Check(
            name,
            Verdict.OK,
            f"a test token published by the broker came back through {where} "
            f"({len(fetches)} address{'es' if len(fetches) > 1 else ''})",
            detail,
        )
    bad = [fetch for fetch in fetches if not fetch.ok]
    if all(fetch.location for fetch in bad):
        return Check(
            name,
            Verdict.WARN,
            f"{where} redirects; Let's Encrypt follows redirects, the doctor does not, so "
            "the redirect target must serve the challenge",
            detail,
            f"forward {PREFIX} to the broker on port 80 instead of redirecting it",
        )
    return Check(
        name,
        Verdict.FAIL,
        f"a test token published by the broker did not come back through {where} "
        f"(from {bad[0].describe()})",
        detail,
        f"make the router for {subject.name} forward {PREFIX} on port 80 to the broker's "
        "HTTP-01 responder (CERTBROKER_HTTP01_LISTEN)",
    )


def probe_after_dns(found: Sequence[Check]) -> list[Check]:
    """A probe that failed while the DNS check failed: the DNS is the thing to fix first.

    The probe follows the same records, so its own fix (the router) would send
    the reader to the wrong place.
    """
    verdicts = {check.name: check.verdict for check in found}
    if verdicts.get("dns") is not Verdict.FAIL or verdicts.get("http01_probe") is not Verdict.FAIL:
        return list(found)
    fix = "fix the dns check first: the probe went where the name's records point"
    return [replace(c, fix=fix) if c.name == "http01_probe" else c for c in found]


# --------------------------------------------------------------------------- quota


async def quota_headroom(
    store: DoctorStore, subject: Subject, limits: Limits, now: datetime
) -> Check:
    """The CA's rate limits as the scheduler's ledger counts them before ordering
    (``LimitsLedger.outlook``: what ``reserve`` would answer now, spending nothing)."""
    domain = subject.domain
    request = OrderRequest(
        domain=domain.name,
        app=domain.app,
        registered_domain=registered_domain(domain.name),
        names=domain.order_names,
        renewal=domain.le_cert is not None,
        replaces=None,
    )
    outlook = await LimitsLedger(limits).outlook(store, request, now)
    detail = "\n".join(
        f"{b.what}: {b.tokens} of {b.limit.capacity} left ({b.limit.describe()})"
        for b in outlook.buckets
    )
    if outlook.renewal:
        detail += "\na renewal (these names were issued before): no new-order or "
        detail += "registered-domain token needed"
    if outlook.hold is not None:
        until = outlook.hold.until.isoformat(timespec="seconds")
        return Check(
            "quota",
            Verdict.FAIL,
            outlook.hold.message,
            detail,
            f"wait: the broker orders by itself at {until}",
        )
    low = [b for b in outlook.buckets if b.tokens <= max(1, b.limit.capacity // 10)]
    summary = "; ".join(f"{b.tokens} of {b.limit.capacity} left: {b.what}" for b in low)
    if low:
        return Check("quota", Verdict.WARN, f"few tokens left: {summary}", detail)
    return Check("quota", Verdict.OK, "every rate-limit bucket has room", detail)


# --------------------------------------------------------------------------- schedule


def schedule(
    subject: Subject, order: PendingOrder | None, now: datetime
) -> tuple[Check, str, datetime | None]:
    """The next scheduled action, and the last error the scheduler recorded."""
    if not subject.known:
        app = subject.app or "APP"
        what = f"nothing yet: certbroker domains-add {subject.name} --app {app} starts issuance"
        return Check("schedule", Verdict.SKIPPED, "not added: nothing is scheduled"), what, None
    domain = subject.domain
    what, _ = next_action(domain, order, now)
    when = domain.next_run_at
    at = f" at {when.isoformat(timespec='seconds')}" if when is not None else ""
    retry = domain.retry
    lines = [f"state: {_STATE_WORDS[domain.le_state]}"]
    if retry.attempt:
        lines.append(f"failed attempts in a row: {retry.attempt}")
    if retry.last_error_reason:
        lines.append(f"last error: {retry.last_error_reason}: {retry.last_error_message}")
    verdict = Verdict.WARN if retry.attempt else Verdict.OK
    check = Check("schedule", verdict, f"next: {what}{at}", "\n".join(lines))
    return check, what, when
