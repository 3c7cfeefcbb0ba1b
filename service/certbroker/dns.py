"""DNS checks before and around issuance: points-at-platform, CAA, TXT and CNAME.

Why this module exists: the seed keeps a domain in *Pending DNS* until its DNS
targets the platform, and an order that CAA forbids only burns Let's Encrypt's
failed-validation quota. Both checks run here, with dnspython's stub resolver,
and return plain frozen values with a stable ``reason`` code and a ``message``
a person can act on, so the lifecycle stays pure and the API can show *why* a
domain is stuck.

Failures of the DNS itself (timeout, SERVFAIL) are never mistaken for "not
pointing" or "CAA allows": they have their own reasons so the scheduler can
retry them without telling the user their records are wrong.

The CAA decision is split into pure functions (``parse_issue_value``,
``decide_caa``) so RFC 8659's rules are tested without a DNS server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset
from dns.rdtypes.ANY.CAA import CAA
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.TXT import TXT

from certbroker.errors import Unavailable
from certbroker.model import DnsObservation

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Label checked under a wildcard domain: ``*.example.com`` is checked as
#: ``certbroker-wildcard-check.example.com``. A DNS wildcard record answers for
#: any label, so one fixed, unlikely-to-be-used label tells us where the
#: wildcard points without guessing the customer's real sub-domains. The apex
#: (``example.com``) is not checked: a wildcard certificate does not cover it.
WILDCARD_PROBE_LABEL = "certbroker-wildcard-check"

#: CNAME hops we follow ourselves after the server's reply stops at a CNAME.
#: Real chains are one or two hops; the limit only stops loops.
MAX_CNAME_HOPS = 8

#: CAA property tags we understand (RFC 8659, RFC 8657 parameters live inside
#: issue values, RFC 9495 issuemail, BIMI issuevmc, RFC 8659 contact tags). An
#: unknown tag with the critical flag forbids issuance (RFC 8659 §4.1).
KNOWN_CAA_TAGS = frozenset(
    {"issue", "issuewild", "iodef", "issuemail", "issuevmc", "contactemail", "contactphone"}
)
CAA_CRITICAL_FLAG = 128


class DnsReason(StrEnum):
    """Stable outcome codes of ``points_to_platform``; only DNS_OK means "points"."""

    OK = "DNS_OK"
    NO_RECORDS = "DNS_NO_RECORDS"
    NXDOMAIN = "DNS_NXDOMAIN"
    NOT_POINTING = "DNS_NOT_POINTING"
    STRAY_AAAA = "DNS_STRAY_AAAA"
    TIMEOUT = "DNS_TIMEOUT"
    SERVFAIL = "DNS_SERVFAIL"


class CaaReason(StrEnum):
    """Stable outcome codes of ``caa_allows``; only CAA_OK means "allowed"."""

    OK = "CAA_OK"
    FORBIDS = "CAA_FORBIDS"
    ERROR = "CAA_ERROR"


class DnsLookupError(Unavailable):
    """The DNS did not answer (timeout) or failed (SERVFAIL and other bad rcodes).

    Raised by ``txt_values`` and ``cname_target``, whose return values have no
    room for "unknown"; ``reason`` is ``DNS_TIMEOUT`` or ``DNS_SERVFAIL``.
    """


# --------------------------------------------------------------------------- names


def to_dns_name(name: str) -> dns.name.Name:
    """Parse a host name (Unicode or A-labels, trailing dot optional) as absolute.

    Raises ``ValueError`` rather than dnspython's exceptions, so callers that
    validate input need not import dnspython.
    """
    text = name.strip()
    if not text or text == ".":
        raise ValueError(f"empty DNS name: {name!r}")
    try:
        return dns.name.from_text(text)
    except (dns.exception.DNSException, UnicodeError) as e:
        raise ValueError(f"invalid DNS name {name!r}: {e}") from e


def normalise_host(name: str) -> str:
    """Lower-case A-label form without the trailing dot: how host names are compared."""
    return to_dns_name(name).to_text(omit_final_dot=True).lower()


def _display(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class PlatformTargets:
    """What counts as "pointing at the platform".

    ``addresses``: the platform's front IPs (an A/AAAA record must be one of
    them). ``hosts``: names a customer may CNAME to (e.g. ``apps.platform.test``),
    normalised (lower-case A-labels, no trailing dot).
    """

    addresses: frozenset[IPAddress] = frozenset()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, items: Iterable[str]) -> PlatformTargets:
        """Read a list mixing IP addresses and host names (e.g. from settings).

        Raises ``ValueError`` on an empty list or an entry that is neither.
        """
        addresses: set[IPAddress] = set()
        hosts: set[str] = set()
        for item in items:
            text = item.strip()
            try:
                addresses.add(ipaddress.ip_address(text))
                continue
            except ValueError:
                pass
            hosts.add(normalise_host(text))
        if not addresses and not hosts:
            raise ValueError("platform targets: need at least one IP address or host name")
        return cls(frozenset(addresses), frozenset(hosts))

    def is_platform_host(self, name: dns.name.Name) -> bool:
        return _display(name) in self.hosts

    def expected(self) -> tuple[str, ...]:
        """The records that would make a name point here, in ``answered``'s format."""
        v4 = sorted(a for a in self.addresses if a.version == 4)
        v6 = sorted(a for a in self.addresses if a.version == 6)
        return (
            *(f"A {a}" for a in v4),
            *(f"AAAA {a}" for a in v6),
            *(f"CNAME {h}." for h in sorted(self.hosts)),
        )

    def describe(self) -> str:
        """``one of 127.0.0.1 or a CNAME to apps.platform.test`` for messages."""
        parts: list[str] = []
        ips = [str(a) for a in sorted(self.addresses, key=lambda a: (a.version, a))]
        if ips:
            parts.append(ips[0] if len(ips) == 1 else "one of " + ", ".join(ips))
        hosts = sorted(self.hosts)
        if hosts:
            parts.append(
                "a CNAME to " + (hosts[0] if len(hosts) == 1 else "one of " + ", ".join(hosts))
            )
        return " or ".join(parts)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DnsResult:
    """Outcome of ``points_to_platform``.

    ``name`` is the name as asked (``*.example.com``), ``checked`` the name
    actually queried (the probe label for wildcards). ``answered`` lists what
    DNS said (``"A 192.0.2.1"``, ``"CNAME apps.platform.test."``), ``expected``
    what would satisfy us, in the same format.
    """

    name: str
    checked: str
    points: bool
    answered: tuple[str, ...]
    expected: tuple[str, ...]
    reason: DnsReason
    message: str


@dataclass(frozen=True)
class CaaResult:
    """Outcome of ``caa_allows``.

    ``at`` is the name (in the tree climb) whose CAA set decided, ``""`` when
    no CAA record exists anywhere; ``record`` the decisive record(s) as zone
    text, ``""`` when none; ``fix`` the record that would allow the CA, as zone
    text, when the set forbids it (``""`` otherwise).
    """

    allowed: bool
    record: str
    at: str
    reason: CaaReason
    message: str
    fix: str = ""


def to_observation(result: DnsResult, now: datetime) -> DnsObservation:
    """The stored/API view of a check; the reason and message go to the retry state."""
    return DnsObservation(
        answered=result.answered,
        expected=result.expected,
        points_to_platform=result.points,
        checked_at=now,
    )


# --------------------------------------------------------------------------- CAA (pure)


@dataclass(frozen=True)
class CaaRecord:
    """One CAA record with its owner, decoded for RFC 8659 decisions."""

    owner: str
    flags: int
    tag: str
    value: str

    @classmethod
    def from_rdata(cls, owner: dns.name.Name, rdata: CAA) -> CaaRecord:
        return cls(
            owner=owner.to_text().lower(),
            flags=rdata.flags,
            tag=rdata.tag.decode("ascii", errors="replace").lower(),
            value=rdata.value.decode("utf-8", errors="replace"),
        )

    @property
    def critical(self) -> bool:
        return bool(self.flags & CAA_CRITICAL_FLAG)

    def text(self) -> str:
        """Zone-file form, e.g. ``example.com. CAA 0 issue "other.ca"``."""
        value = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.owner} CAA {self.flags} {self.tag} "{value}"'


_LABEL = r"[A-Za-z0-9](?:-*[A-Za-z0-9])*"
_ISSUER_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def parse_issue_value(value: str) -> str | None:
    """The issuer-domain-name of an ``issue``/``issuewild`` value, lower-cased.

    RFC 8659 §4.2: ``*WSP [issuer-domain-name *WSP] [";" *WSP [parameters *WSP]]``.
    Parameters (account URI, validation methods) are ignored here. ``None``
    means the record names no CA: ``";"`` (forbid all) or a malformed domain,
    which the RFC says must authorize nobody.
    """
    domain = value.split(";", 1)[0].strip(" \t")
    if not domain or not _ISSUER_RE.fullmatch(domain):
        return None
    return domain.lower()


@dataclass(frozen=True)
class CaaDecision:
    """What ``decide_caa`` concluded from one relevant CAA set."""

    allowed: bool
    records: tuple[CaaRecord, ...]
    why: str


def decide_caa(records: Sequence[CaaRecord], ca_identity: str, *, wildcard: bool) -> CaaDecision:
    """RFC 8659 §4.2/4.3 on the relevant (first non-empty) CAA RRset, without I/O.

    - an unknown tag with the critical flag forbids everything;
    - for a wildcard, ``issuewild`` records decide when any exist, else ``issue``;
    - no records of the deciding tag → no restriction;
    - otherwise allowed iff one record names ``ca_identity`` (``issue ";"`` names none).
    """
    ca = ca_identity.strip().rstrip(".").lower()
    for r in records:
        if r.critical and r.tag not in KNOWN_CAA_TAGS:
            return CaaDecision(False, (r,), f"unknown critical CAA tag {r.tag!r}")
    wild = [r for r in records if r.tag == "issuewild"]
    if wildcard and wild:
        tag, relevant = "issuewild", wild
    else:
        tag, relevant = "issue", [r for r in records if r.tag == "issue"]
    if not relevant:
        return CaaDecision(True, (), f"no {tag} property restricts issuance")
    for r in relevant:
        if parse_issue_value(r.value) == ca:
            return CaaDecision(True, (r,), f"{tag} names {ca}")
    if all(parse_issue_value(r.value) is None for r in relevant):
        return CaaDecision(False, tuple(relevant), f"{tag} forbids issuance by any CA")
    return CaaDecision(False, tuple(relevant), f"{tag} does not name {ca}")


# --------------------------------------------------------------------------- lookups


class _Status(Enum):
    OK = "ok"  # NOERROR, possibly with no records of the type
    NXDOMAIN = "nxdomain"
    TIMEOUT = "timeout"
    SERVFAIL = "servfail"


@dataclass(frozen=True)
class _Lookup:
    """One query with the CNAMEs followed, flattened so callers never catch dnspython errors."""

    status: _Status
    cnames: tuple[tuple[dns.name.Name, dns.name.Name], ...] = ()
    rrset: dns.rrset.RRset | None = None
    error: str = ""


def _chain(response: dns.message.Message) -> list[tuple[dns.name.Name, dns.name.Name]]:
    if not isinstance(response, dns.message.QueryMessage):
        return []
    try:
        cnames = response.resolve_chaining().cnames
    except dns.exception.DNSException:
        return []
    return [(rrset.name, rd.target) for rrset in cnames for rd in rrset if isinstance(rd, CNAME)]


def _no_nameservers(e: dns.resolver.NoNameservers) -> _Lookup:
    """A server that answered a bad rcode failed (SERVFAIL); one that did not is a timeout."""
    errors = e.kwargs.get("errors", [])
    rcodes = [err[3] for err in errors if isinstance(err[3], str)]
    if rcodes:
        return _Lookup(_Status.SERVFAIL, error=", ".join(sorted(set(rcodes))))
    return _Lookup(_Status.TIMEOUT, error=str(e))


class DnsChecker:
    """DNS checks through given servers (or the system's resolv.conf when ``None``).

    ``timeout`` bounds each public call as a whole (all its queries and CNAME
    hops), so a dead server costs at most that long. No caching: every check
    must see the customer's latest change. The constructor does no I/O; with
    ``servers=None`` resolv.conf is read (in a thread) on first use.
    """

    def __init__(
        self,
        servers: list[tuple[str, int]] | None,
        *,
        timeout: float = 2.0,
        wildcard_probe_label: str = WILDCARD_PROBE_LABEL,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._timeout = timeout
        self._probe_label = wildcard_probe_label
        self._resolver: dns.asyncresolver.Resolver | None = None
        if servers is not None:
            if not servers:
                raise ValueError("servers: empty list (use None for the system resolver)")
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port=p) for ip, p in servers]
            self._resolver = self._tune(resolver)

    def _tune(self, resolver: dns.asyncresolver.Resolver) -> dns.asyncresolver.Resolver:
        """No cache; split the budget so a dead first server leaves time for the next."""
        resolver.cache = None
        resolver.timeout = self._timeout / max(1, len(resolver.nameservers))
        resolver.lifetime = self._timeout
        return resolver

    async def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            resolver = await asyncio.to_thread(dns.asyncresolver.Resolver)
            self._resolver = self._tune(resolver)
        return self._resolver

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._timeout

    async def _lookup(
        self,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        deadline: float,
        stop_at: Callable[[dns.name.Name], bool] | None = None,
    ) -> _Lookup:
        """Query ``qname``; when the reply stops at a CNAME, query its target ourselves.

        ``stop_at`` ends the walk early at a name that already settles the
        question (a platform host). Loops and over-long chains end as "no
        records" with the CNAMEs seen so far.
        """
        resolver = await self._get_resolver()
        loop = asyncio.get_running_loop()
        cnames: list[tuple[dns.name.Name, dns.name.Name]] = []
        seen = {qname}
        current = qname
        for _ in range(MAX_CNAME_HOPS):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return _Lookup(_Status.TIMEOUT, tuple(cnames), error="deadline reached")
            try:
                answer = await resolver.resolve(
                    current, rdtype, raise_on_no_answer=False, search=False, lifetime=remaining
                )
            except dns.resolver.NXDOMAIN as e:
                responses: dict[dns.name.Name, dns.message.Message] = e.kwargs.get("responses", {})
                for response in responses.values():
                    cnames.extend(_chain(response))
                return _Lookup(_Status.NXDOMAIN, tuple(cnames))
            except dns.exception.Timeout as e:
                return _Lookup(_Status.TIMEOUT, tuple(cnames), error=str(e))
            except dns.resolver.NoNameservers as e:
                failed = _no_nameservers(e)
                return _Lookup(failed.status, tuple(cnames), error=failed.error)
            except dns.exception.DNSException as e:
                return _Lookup(_Status.SERVFAIL, tuple(cnames), error=str(e))
            cnames.extend(_chain(answer.response))
            target = answer.canonical_name
            if answer.rrset is not None or target == current or rdtype == dns.rdatatype.CNAME:
                return _Lookup(_Status.OK, tuple(cnames), answer.rrset)
            if target in seen or (stop_at is not None and stop_at(target)):
                return _Lookup(_Status.OK, tuple(cnames))
            seen.add(target)
            current = target
        return _Lookup(_Status.OK, tuple(cnames))

    # ----------------------------------------------------------------- points

    def probe_name(self, name: str) -> dns.name.Name:
        """The name actually queried: ``*.example.com`` → ``<probe label>.example.com``."""
        qname = to_dns_name(name)
        if qname.labels and qname.labels[0] == b"*":
            return dns.name.Name((self._probe_label.encode("ascii"), *qname.labels[1:]))
        return qname

    async def points_to_platform(self, name: str, targets: PlatformTargets) -> DnsResult:
        """Does ``name`` lead to the platform (CNAME chain to a platform host, or only
        platform addresses)? A and AAAA are queried concurrently.

        Any A/AAAA that is not a platform address keeps the name pending: Let's
        Encrypt (and half the visitors) could reach another server.
        """
        qname = self.probe_name(name)
        deadline = self._deadline()
        a, aaaa = await asyncio.gather(
            self._lookup(qname, dns.rdatatype.A, deadline, targets.is_platform_host),
            self._lookup(qname, dns.rdatatype.AAAA, deadline, targets.is_platform_host),
        )
        return _judge_pointing(name, qname, targets, a, aaaa, self._timeout)

    async def addresses(self, name: str) -> tuple[IPAddress, ...]:
        """The A and AAAA addresses ``name`` resolves to (CNAMEs followed), IPv6 first.

        For connecting to the name as a client would (the doctor's HTTP-01
        probe), through the same servers as every other check. A missing name
        or record is ``()``; a DNS failure raises ``DnsLookupError``.
        """
        qname = to_dns_name(name)
        deadline = self._deadline()
        found = await asyncio.gather(
            self._lookup(qname, dns.rdatatype.AAAA, deadline),
            self._lookup(qname, dns.rdatatype.A, deadline),
        )
        addresses: list[IPAddress] = []
        for lookup in found:
            addresses.extend(_address_records(self._raise_on_failure(name, lookup)))
        return tuple(addresses)

    # ----------------------------------------------------------------- CAA

    async def caa_allows(self, name: str, ca_identity: str, *, wildcard: bool) -> CaaResult:
        """May ``ca_identity`` (e.g. ``letsencrypt.org``) issue for ``name``? (RFC 8659)

        A ``*.`` prefix is removed and implies ``wildcard``. The CAA sets of the
        name and each parent up to the TLD (the root is skipped) are queried
        concurrently; the lowest non-empty one decides. A failed lookup below
        that set (SERVFAIL, timeout) is CAA_ERROR, as Let's Encrypt refuses too.
        A CNAME at a level is followed; an empty result there moves up from the
        original name, not from the alias target (RFC 8659 §3).
        """
        qname = to_dns_name(name)
        if qname.labels and qname.labels[0] == b"*":
            qname = qname.parent()
            wildcard = True
        levels: list[dns.name.Name] = []
        level = qname
        while len(level) > 1:  # len counts the root label; skip the root itself
            levels.append(level)
            level = level.parent()
        deadline = self._deadline()
        tasks = [
            asyncio.ensure_future(self._lookup(lv, dns.rdatatype.CAA, deadline)) for lv in levels
        ]
        try:
            for lv, task in zip(levels, tasks, strict=True):
                found = await task
                if found.status in (_Status.TIMEOUT, _Status.SERVFAIL):
                    what = "timed out" if found.status is _Status.TIMEOUT else "failed"
                    return CaaResult(
                        allowed=False,
                        record="",
                        at=_display(lv),
                        reason=CaaReason.ERROR,
                        message=(
                            f"the CAA lookup for {_display(lv)} {what} ({found.error}); "
                            "Let's Encrypt would refuse to issue, retrying later"
                        ),
                    )
                if found.rrset is None or len(found.rrset) == 0:
                    continue
                records = [
                    CaaRecord.from_rdata(found.rrset.name, rd)
                    for rd in found.rrset
                    if isinstance(rd, CAA)
                ]
                return _caa_result(name, lv, records, ca_identity, wildcard=wildcard)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return CaaResult(
            allowed=True,
            record="",
            at="",
            reason=CaaReason.OK,
            message=f"no CAA record restricts issuance for {_display(qname)}",
        )

    # ----------------------------------------------------------------- TXT / CNAME

    async def txt_values(self, name: str) -> tuple[str, ...]:
        """TXT strings at ``name`` (CNAMEs followed, as DNS-01 delegation needs).

        Each record's character-strings are joined. A missing name or record is
        ``()``; a DNS failure raises ``DnsLookupError``.
        """
        found = self._raise_on_failure(
            name, await self._lookup(to_dns_name(name), dns.rdatatype.TXT, self._deadline())
        )
        if found.rrset is None:
            return ()
        return tuple(
            b"".join(rd.strings).decode("utf-8", errors="replace")
            for rd in found.rrset
            if isinstance(rd, TXT)
        )

    async def cname_target(self, name: str) -> str | None:
        """The CNAME target of ``name`` (normalised, no trailing dot), or ``None``.

        Only the first hop: DNS-01 delegation checks that ``_acme-challenge.x``
        is an alias of the zone we control. A DNS failure raises ``DnsLookupError``.
        """
        found = self._raise_on_failure(
            name, await self._lookup(to_dns_name(name), dns.rdatatype.CNAME, self._deadline())
        )
        if found.rrset is None:
            return None
        for rd in found.rrset:
            if isinstance(rd, CNAME):
                return _display(rd.target)
        return None

    def _raise_on_failure(self, name: str, found: _Lookup) -> _Lookup:
        if found.status is _Status.TIMEOUT:
            raise DnsLookupError(
                f"no DNS server answered for {name} within {self._timeout:g} s ({found.error})",
                reason=DnsReason.TIMEOUT,
            )
        if found.status is _Status.SERVFAIL:
            raise DnsLookupError(
                f"the DNS lookup for {name} failed ({found.error})", reason=DnsReason.SERVFAIL
            )
        return found


# --------------------------------------------------------------------------- judging


def _caa_result(
    name: str,
    level: dns.name.Name,
    records: Sequence[CaaRecord],
    ca_identity: str,
    *,
    wildcard: bool,
) -> CaaResult:
    decision = decide_caa(records, ca_identity, wildcard=wildcard)
    record = "; ".join(r.text() for r in decision.records)
    at = _display(level)
    if decision.allowed:
        message = f"CAA at {at} allows {ca_identity} to issue for {name} ({decision.why})"
        return CaaResult(True, record, at, CaaReason.OK, message)
    fix = caa_fix(at, decision.records, ca_identity, wildcard=wildcard)
    todo = fix if fix.startswith("remove ") else f"add {fix} or remove the record"
    message = (
        f"CAA at {at} forbids {ca_identity} from issuing for {name}: {record} "
        f"({decision.why}); {todo}"
    )
    return CaaResult(False, record, at, CaaReason.FORBIDS, message, fix)


def caa_fix(at: str, deciding: Sequence[CaaRecord], ca_identity: str, *, wildcard: bool) -> str:
    """What makes a forbidding CAA set at ``at`` allow ``ca_identity``: the record to add
    (``issuewild`` for a wildcard), or, when a critical tag nobody understands forbids
    everything (RFC 8659 §4.1), removing it, since no record added can outweigh it."""
    critical = [r for r in deciding if r.critical and r.tag not in KNOWN_CAA_TAGS]
    if critical:
        return "remove " + "; ".join(r.text() for r in critical)
    return f'{at}. CAA 0 {"issuewild" if wildcard else "issue"} "{ca_identity}"'


def _address_records(found: _Lookup) -> list[IPAddress]:
    if found.rrset is None:
        return []
    return [ipaddress.ip_address(rd.to_text()) for rd in found.rrset]


def _judge_pointing(
    name: str,
    qname: dns.name.Name,
    targets: PlatformTargets,
    a: _Lookup,
    aaaa: _Lookup,
    timeout: float,
) -> DnsResult:
    """Turn the A and AAAA lookups into a verdict; pure, so the rules read in one place."""
    checked = _display(qname)
    shown = name.rstrip(".")
    if qname != to_dns_name(name):
        shown = f"{shown} (checked as {checked})"
    answered: list[str] = []
    for owner_target in (*a.cnames, *aaaa.cnames):
        text = f"CNAME {owner_target[1].to_text().lower()}"
        if text not in answered:
            answered.append(text)
    # Sorted: a round-robin server rotates its answers, and a re-check that finds the
    # same records must read the same (it writes no event then, see lifecycle).
    v4 = sorted(_address_records(a))
    v6 = sorted(_address_records(aaaa))
    answered += [f"A {ip}" for ip in v4] + [f"AAAA {ip}" for ip in v6]
    expected = targets.expected()

    def result(points: bool, reason: DnsReason, message: str) -> DnsResult:
        return DnsResult(name, checked, points, tuple(answered), expected, reason, message)

    has = ", ".join(answered)
    if any(targets.is_platform_host(t) for _, t in (*a.cnames, *aaaa.cnames)):
        return result(True, DnsReason.OK, f"{shown} points at the platform ({has})")

    failed = [f for f in (a, aaaa) if f.status in (_Status.TIMEOUT, _Status.SERVFAIL)]
    if any(f.status is _Status.TIMEOUT for f in failed):
        return result(
            False,
            DnsReason.TIMEOUT,
            f"no DNS server answered for {shown} within {timeout:g} s; will retry",
        )
    if failed:
        errors = ", ".join(sorted({f.error for f in failed}))
        return result(
            False,
            DnsReason.SERVFAIL,
            f"the DNS servers failed to answer for {shown} ({errors}); "
            "check the zone's name servers and DNSSEC",
        )

    want = targets.describe()
    if not v4 and not v6:
        if a.status is _Status.NXDOMAIN and aaaa.status is _Status.NXDOMAIN:
            lead = f"{shown} does not exist in DNS (NXDOMAIN)"
            if answered:
                lead = f"{shown} has {has}, which does not exist in DNS (NXDOMAIN)"
            return result(False, DnsReason.NXDOMAIN, f"{lead}; expected {want}")
        lead = f"{shown} has no A, AAAA or CNAME record"
        if answered:
            lead = f"{shown} has {has} but no A or AAAA record behind it"
        return result(False, DnsReason.NO_RECORDS, f"{lead}; expected {want}")

    stray_v4 = [ip for ip in v4 if ip not in targets.addresses]
    stray_v6 = [ip for ip in v6 if ip not in targets.addresses]
    if not stray_v4 and not stray_v6:
        return result(True, DnsReason.OK, f"{shown} points at the platform ({has})")
    if v4 and not stray_v4:
        strays = ", ".join(f"AAAA {ip}" for ip in stray_v6)
        v6_targets = sorted(str(ip) for ip in targets.addresses if ip.version == 6)
        fix = (
            "remove it or change it to one of " + ", ".join(v6_targets)
            if v6_targets
            else "remove it (the platform has no IPv6 address)"
        )
        return result(
            False,
            DnsReason.STRAY_AAAA,
            f"{shown} has {strays} besides its platform A record; IPv6 clients and "
            f"Let's Encrypt would reach another server: {fix}",
        )
    return result(False, DnsReason.NOT_POINTING, f"{shown} has {has}, expected {want}")
