"""``certbroker doctor``: run every pre-flight check of a domain now, read-only.

Why: when a domain is stuck, the operator and the customer want one answer
to "would issuance work right now, and if not, what exactly do I change?"
without waiting for the next scheduler pass or reading logs. The doctor asks
what the scheduler asks before it orders (``certbroker.doctor.checks``), plus
what only a real request can show (the HTTP-01 self-probe), and explains
each result in plain words with the record to create.

Read-only by construction: it reads the store, never writes a domain, an
order or a certificate, and never contacts the CA. The rows a run can add are
the probe token's challenge event, only while a router watches with
``include_challenges`` (so routers that answer challenges themselves are
probed too; ``ChallengeEvents`` writes nothing when none listens), and, with
several brokers on one store, the token's published answer (so whichever
broker the probe's request reaches answers it), withdrawn when the probe ends. It works
for a name not added yet (the checks run as for the domain that adding it
would create).

Bounded: at most one run per domain per interval and a few at once
(``DoctorLimit``), and every check under one deadline: a check still running
then is reported as FAIL ("did not finish"), the others keep their answers.
A check that raises unexpectedly is logged and reported as FAIL too, so one
broken check never hides the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from certbroker import tenancy
from certbroker.clock import Clock
from certbroker.delegation import LabelKey
from certbroker.dns import PlatformTargets
from certbroker.doctor import checks
from certbroker.doctor.checks import DoctorDns, DoctorStore, Probe, Subject
from certbroker.doctor.limit import DoctorLimit
from certbroker.doctor.report import Check, Report, Verdict
from certbroker.limits import Limits
from certbroker.model import ChallengeType, Domain, LetsEncryptState, Source
from certbroker.names import normalise_domain
from certbroker.platform import Platform
from certbroker.ports import Dns01Access

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DoctorPolicy:
    """What the broker is configured with, and the doctor's own bounds (from Settings)."""

    acme_directory: str
    caa_identity: str = "letsencrypt.org"
    limits: Limits = field(default_factory=Limits)
    timeout: timedelta = timedelta(seconds=10)
    interval: timedelta = timedelta(seconds=10)
    max_running: int = 4


class Doctor:
    """Runs the checks for one domain; the constructor does no I/O."""

    def __init__(
        self,
        store: DoctorStore,
        clock: Clock,
        dns: DoctorDns,
        targets: PlatformTargets | None,
        policy: DoctorPolicy,
        *,
        probe: Probe | None = None,
        dns01: Dns01Access | None = None,
        labels: LabelKey | None = None,
        platform: Platform | None = None,
    ) -> None:
        self._platform = platform if platform is not None else Platform()
        self._store = store
        self._clock = clock
        self._dns = dns
        self._targets = targets
        self._policy = policy
        self._probe = probe
        self._dns01 = dns01
        self._labels = labels
        self.limit = DoctorLimit(policy.interval, policy.max_running)

    async def check(self, domain: str, app: str = "") -> Report:
        """Every check of ``domain``; ``app`` (optional) is who owns or would own it.

        Raises ``InvalidArgument`` for a bad name or app, ``ResourceExhausted``
        (with the delay) when the rate limit refuses the run.
        """
        name = normalise_domain(domain, exempt=self._platform.names)
        if app:
            tenancy.check_app(app)
        with self.limit.admit(name, self._clock.now()):
            return await self._run(name, app)

    async def _run(self, name: str, app: str) -> Report:
        now = self._clock.now()
        record = await self._store.get_domain(name)
        subject = Subject(record or self._as_added(name, app, now), record is not None, app)
        order = await self._store.get_order(name) if record is not None else None
        policy = self._policy
        found = await asyncio.gather(
            self._bounded("ownership", checks.ownership(self._store, subject, self._platform)),
            self._bounded("dns", checks.pointing(self._dns, self._targets, subject)),
            self._bounded("caa", checks.caa(self._dns, policy.caa_identity, subject)),
            self._bounded(
                "dns01_delegation",
                checks.dns01_delegation(self._dns, self._dns01, self._labels, subject),
            ),
            self._bounded("http01_probe", checks.http01_probe(self._probe, subject)),
            self._bounded(
                "quota",
                checks.quota_headroom(self._store, subject, policy.limits, now),
            ),
        )
        ran = checks.probe_after_dns(found)
        configuration = checks.configuration(
            subject, policy.acme_directory, self._targets, self._dns01
        )
        scheduled, what, when = checks.schedule(subject, order, now)
        owner = record.app if record is not None and (not app or app == record.app) else app
        return Report(
            domain=name,
            app=owner,
            known=record is not None,
            checks=(ran[0], configuration, *ran[1:], scheduled),
            next_action=what,
            next_action_at=when,
            checked_at=now,
        )

    def _as_added(self, name: str, app: str, now: datetime) -> Domain:
        """The row ``IssueCertificate`` would create (defaults only), to check a new name."""
        wildcard = name.startswith("*.")
        return Domain(
            name=name,
            app=app,
            letsencrypt_enabled=True,
            le_state=LetsEncryptState.PENDING_DNS,
            serving=Source.NONE,
            created_at=now,
            updated_at=now,
            challenge=ChallengeType.DNS_01 if wildcard else ChallengeType.HTTP_01,
        )

    async def _bounded(self, name: str, check: Awaitable[Check]) -> Check:
        seconds = self._policy.timeout.total_seconds()
        try:
            async with asyncio.timeout(seconds):
                return await check
        except TimeoutError:
            return Check(name, Verdict.FAIL, f"the check did not finish within {seconds:g} s")
        except Exception:
            log.exception("doctor check %s failed", name)
            return Check(
                name, Verdict.FAIL, "the check failed unexpectedly; the broker logged the details"
            )


__all__ = ["Doctor", "DoctorPolicy"]
