"""The scheduler's DNS port, observed: a span, a counted outcome and a DEBUG line per check.

A wrapper rather than lines in the scheduler: the checks are watched wherever
the scheduler calls them from, and ``DnsChecker`` stays about DNS. Outcomes
are the checkers' stable reason codes (``DNS_OK``, ``DNS_NOT_POINTING``,
``CAA_FORBIDS`` ...), a bounded set, so they are safe metric labels.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from opentelemetry import trace

from certbroker.dns import CaaResult, DnsLookupError, DnsResult, PlatformTargets
from certbroker.metrics import Metrics
from certbroker.telemetry import DOMAIN_ATTRIBUTE

if TYPE_CHECKING:
    from certbroker.ports import DnsChecks

log = logging.getLogger(__name__)


class InstrumentedDns:
    """``DnsChecks`` around another ``DnsChecks``."""

    def __init__(
        self, dns: DnsChecks, tracer: trace.Tracer | None = None, metrics: Metrics | None = None
    ) -> None:
        self._dns = dns
        self._tracer = tracer or trace.NoOpTracer()
        self._metrics = metrics or Metrics()

    async def points_to_platform(self, name: str, targets: PlatformTargets) -> DnsResult:
        with self._tracer.start_as_current_span(
            "dns.points", attributes={DOMAIN_ATTRIBUTE: name}
        ) as span:
            try:
                result = await self._dns.points_to_platform(name, targets)
            except DnsLookupError as error:
                self._metrics.dns_checked("points", error.reason)
                raise
            span.set_attribute("certbroker.dns.outcome", str(result.reason))
        self._metrics.dns_checked("points", str(result.reason))
        log.debug(
            "DNS for %s: %s (answered %s)",
            name,
            result.reason,
            ", ".join(result.answered) or "nothing",
            extra={"domain": name, "check": "points", "outcome": str(result.reason)},
        )
        return result

    async def caa_allows(self, name: str, ca_identity: str, *, wildcard: bool) -> CaaResult:
        with self._tracer.start_as_current_span(
            "dns.caa", attributes={DOMAIN_ATTRIBUTE: name}
        ) as span:
            try:
                result = await self._dns.caa_allows(name, ca_identity, wildcard=wildcard)
            except DnsLookupError as error:
                self._metrics.dns_checked("caa", error.reason)
                raise
            span.set_attribute("certbroker.dns.outcome", str(result.reason))
        self._metrics.dns_checked("caa", str(result.reason))
        log.debug(
            "CAA for %s: %s (%s)",
            name,
            result.reason,
            result.record or "no CAA record",
            extra={"domain": name, "check": "caa", "outcome": str(result.reason)},
        )
        return result

    async def cname_target(self, name: str) -> str | None:
        """The DNS-01 delegation lookup (``_acme-challenge.<base>``)."""
        base = name.removeprefix("_acme-challenge.")  # the domain, less any wildcard label
        with self._tracer.start_as_current_span(
            "dns.delegation", attributes={DOMAIN_ATTRIBUTE: base, "certbroker.dns.name": name}
        ):
            try:
                found = await self._dns.cname_target(name)
            except DnsLookupError as error:
                self._metrics.dns_checked("delegation", error.reason)
                raise
        outcome = "CNAME_FOUND" if found is not None else "CNAME_MISSING"
        self._metrics.dns_checked("delegation", outcome)
        log.debug("CNAME at %s: %s", name, found or "none", extra={"check": "delegation"})
        return found
