"""``ports.DnsChecks`` in memory: where names point, their CAA records, CNAMEs.

Every name points at the platform and has no CAA record unless a test says
otherwise. CAA is decided by the real pure rules (``dns.decide_caa``) over the
records set here, climbing the tree like the real checker. Calls are counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from certbroker.dns import (
    CaaReason,
    CaaRecord,
    CaaResult,
    DnsLookupError,
    DnsReason,
    DnsResult,
    PlatformTargets,
    caa_fix,
    decide_caa,
)


@dataclass
class FakeDns:
    not_pointing: set[str] = field(default_factory=set)
    caa: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # name -> (tag, value)
    cnames: dict[str, str] = field(default_factory=dict)
    failing_cnames: set[str] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)

    async def points_to_platform(self, name: str, targets: PlatformTargets) -> DnsResult:
        self.calls["points"] += 1
        if name in self.not_pointing:
            return DnsResult(
                name, name, False, ("A 198.51.100.7",), targets.expected(),
                DnsReason.NOT_POINTING, f"{name} has A 198.51.100.7, expected {targets.describe()}",
            )  # fmt: skip
        return DnsResult(
            name, name, True, targets.expected()[:1], targets.expected(), DnsReason.OK,
            f"{name} points at the platform",
        )  # fmt: skip

    async def caa_allows(self, name: str, ca_identity: str, *, wildcard: bool) -> CaaResult:
        self.calls["caa"] += 1
        level = name.removeprefix("*.")
        wildcard = wildcard or name.startswith("*.")
        while "." in level:
            if self.caa.get(level):
                records = [CaaRecord(f"{level}.", 0, tag, value) for tag, value in self.caa[level]]
                decision = decide_caa(records, ca_identity, wildcard=wildcard)
                text = "; ".join(r.text() for r in decision.records)
                if decision.allowed:
                    return CaaResult(True, text, level, CaaReason.OK, decision.why)
                message = f"CAA at {level} forbids {ca_identity}: {text} ({decision.why})"
                fix = caa_fix(level, decision.records, ca_identity, wildcard=wildcard)
                return CaaResult(False, text, level, CaaReason.FORBIDS, message, fix)
            level = level.split(".", 1)[1]
        return CaaResult(True, "", "", CaaReason.OK, "no CAA record")

    async def cname_target(self, name: str) -> str | None:
        self.calls["cname"] += 1
        if name in self.failing_cnames:
            raise DnsLookupError(f"the DNS lookup for {name} failed", reason=DnsReason.SERVFAIL)
        return self.cnames.get(name)
