"""The scheduler: a loop over the store that works every due domain, one step at a time.

It asks the store only for domains whose ``next_run_at`` has come (an indexed
query: idle domains cost nothing), works each in its own task (never one
domain twice at once), and writes the outcome through the pure transitions in
``lifecycle``. Everything it needs after a crash is in the store: backoff
columns, the order row (written before the CA is contacted, with the order URL
as soon as the CA gives it), so a restart resumes an interrupted order instead
of ordering twice.

One step, in the order that keeps the CA's quotas safe::

    custom expiry / expiring flag      (lifecycle.tick)
    HTTP-01: DNS points at the platform?  no  -> PENDING_DNS, look again in 60 s
    DNS-01: _acme-challenge delegated?    no  -> ACTION_REQUIRED (the record to
                                               create), look again in 60 s
    CAA allows our CA?                 no  -> failed (backoff), no order
    DNS-01: may our TSIG key update?   no  -> failed (backoff), no order
    quota left (counted locally)?      no  -> held back until the next slot
    reserve the slot + persist order   -> CREATING
    order at the CA (or resume it)     fail -> backoff 1, 2, 4 ... min, max a day
    store certificate                  -> IN_USE / NOT_USED

DNS-01 domains (wildcards, or ``challenge`` DNS_01) need no pointing at the
platform to be validated, so they are not held in PENDING_DNS for it (a
customer can get the certificate before moving traffic); what they need is
the one-time delegation (``certbroker.delegation``), to the label stored with
the domain (bound to its owner: a CNAME made for another app, or for an
earlier owner of the name, is a wrong delegation here). While such a domain
rests, its delegation is looked at again once a day
(``lifecycle.is_due_for_delegation_check``), so a removed CNAME shows as
``action_required`` long before the renewal, while the certificate keeps
serving.

Writes go through ``outbox.save``: a check that finds what the last one found
moves only the scheduling columns and writes no event.

When the store cannot record a step (disk full, database locked), the step's
domain is held back in memory with a growing delay, the whole loop pauses and
probes (``store_health``), and ``on_store_health`` hears when the store turns
unhealthy and healthy again (the server maps it to gRPC health). Nothing is
retried at once, so a failing store cannot make the loop spin. An order whose
certificate was issued but could not be stored keeps its row and URL, so the
next step downloads that certificate again instead of ordering anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from certbroker import delegation, lifecycle, outbox, quota
from certbroker.acme.keys import generate_private_key
from certbroker.acme.problems import AcmeProblem, classify
from certbroker.app import Sealer
from certbroker.clock import Clock
from certbroker.delegation import LabelKey
from certbroker.dns import (
    CaaResult,
    DnsLookupError,
    DnsResult,
    PlatformTargets,
    to_observation,
)
from certbroker.errors import StoreUnavailable
from certbroker.model import Domain, LetsEncryptState, Source
from certbroker.names import registered_domain
from certbroker.store.base import NewCertificate, PendingOrder, Store, Transaction
from certbroker.store_health import Holds, StoreHealth
from certbroker.x509.info import certificate_info

log = logging.getLogger(__name__)
_IDLE_POLL = 1.0
# What a pre-flight check found, applied to the domain in the write that starts the order.
Finding = Callable[[Domain, datetime], Domain]


def _unchanged(domain: Domain, now: datetime) -> Domain:
    return domain


# real seconds: a safety net only; commits and wake() drive the loop


class Issued(Protocol):
    @property
    def chain_pem(self) -> str: ...


class Issuer(Protocol):
    async def start(self) -> None:
        """Find or create the ACME account; idempotent."""
        ...

    async def issue(
        self,
        names: list[str],
        key_pem: bytes,
        *,
        dns01: bool = False,
        dns01_label: str = "",
        on_order_created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Issued: ...

    async def resume(
        self,
        order_url: str,
        names: list[str],
        key_pem: bytes,
        *,
        dns01: bool = False,
        dns01_label: str = "",
    ) -> Issued: ...


class DnsChecks(Protocol):
    async def points_to_platform(self, name: str, targets: PlatformTargets) -> DnsResult: ...

    async def caa_allows(self, name: str, ca_identity: str, *, wildcard: bool) -> CaaResult: ...

    async def cname_target(self, name: str) -> str | None: ...


class Dns01Access(Protocol):
    """The broker's side of DNS-01 (``certbroker.acme.dns01.Dns01Updater``)."""

    @property
    def zone(self) -> str: ...

    async def check_access(self, label: str) -> None:
        """Raise ``AcmeProblem`` if the key may not update delegation ``label``'s record."""
        ...


@dataclass(frozen=True)
class Policy:
    """The knobs of a step, from Settings."""

    dns_check_interval: timedelta = timedelta(seconds=60)
    caa_identity: str = "letsencrypt.org"
    quota_per_registered_domain: int = 50
    quota_per_name_set: int = 5
    max_concurrent: int = 32


class Scheduler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        sealer: Sealer,
        issuer: Issuer | None,
        dns: DnsChecks,
        targets: PlatformTargets | None,
        policy: Policy,
        *,
        dns01: Dns01Access | None = None,
        labels: LabelKey | None = None,
        on_store_health: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._dns01 = dns01
        self._labels = labels
        self._clock = clock
        self._sealer = sealer
        self._issuer = issuer
        self._dns = dns
        self._targets = targets
        self._policy = policy
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._health = StoreHealth()
        self._holds = Holds()
        self._on_store_health = on_store_health
        self._reported_healthy = True

    def wake(self) -> None:
        """Something changed (a new domain, a retry-now): look at the store again."""
        self._wake.set()

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def busy(self) -> int:
        return len(self._inflight)

    @property
    def store_healthy(self) -> bool:
        return self._health.healthy

    def _skipped(self) -> set[str]:
        """Being worked, or held back after their step could not be recorded."""
        return set(self._inflight) | self._holds.held(self._clock.now())

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            paused_until = self._health.resume_at(self._clock.now())
            if paused_until is not None:
                await self._clock.sleep_until(paused_until, self._wake)
                continue
            if self._health.suspect and not await self._probe():
                continue
            try:
                await self._start_due()
                next_due = await self._store.next_due_time(exclude=self._skipped())
            except Exception as error:
                # Reads failed: the same pause as for failed writes, not a traceback a second.
                log.debug("scheduler pass failed", exc_info=True)
                self._health.failed(error, self._clock.now())
                await self._report_health()
                continue
            release = self._holds.next_release(self._clock.now())
            if release is not None and (next_due is None or release < next_due):
                next_due = release
            now = self._clock.now()
            if next_due is not None and next_due > now:
                await self._clock.sleep_until(next_due, self._wake)
            elif next_due is not None and len(self._inflight) < self._policy.max_concurrent:
                continue  # became due while we looked: start it now, not after an idle wait
            else:
                # Nothing due, or no free slot: a finished step or a change wakes us.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_POLL)

    async def _start_due(self) -> None:
        free = self._policy.max_concurrent - len(self._inflight)
        if free <= 0:
            return
        # Names only: each step reads its domain itself, and in-flight ones are skipped in SQL,
        # so a pass costs one small query however many orders are running.
        due = await self._store.due_names(self._clock.now(), free, exclude=self._skipped())
        for name in due:
            task = asyncio.create_task(self._guarded_step(name), name=f"step {name}")
            self._inflight[name] = task

    async def _guarded_step(self, name: str) -> None:
        try:
            try:
                await self.step(name)
            except StoreUnavailable:
                raise
            except Exception as error:
                # A bug or an unforeseen failure: recorded like a failed try, so it backs off.
                log.exception("step for %s failed", name)
                kind = type(error).__name__
                await self._record(
                    name,
                    lambda d, now: lifecycle.failed(d, "INTERNAL", f"internal error ({kind})", now),
                )
        except asyncio.CancelledError:
            self._inflight.pop(name, None)
            raise
        except Exception as error:
            # The outcome could not be recorded: neither retry at once nor lose the domain.
            now = self._clock.now()
            self._holds.hold(name, now)
            self._health.failed(error, now)
        else:
            self._holds.release(name)
        self._inflight.pop(name, None)
        self._wake.set()
        await self._report_health()

    async def _probe(self) -> bool:
        """After failures: one small write says whether the store takes writes again."""
        try:
            async with self._transaction() as tx:
                await tx.set_meta("scheduler_probe", self._clock.now().isoformat().encode())
        except Exception as error:
            self._health.failed(error, self._clock.now())
            await self._report_health()
            return False
        await self._report_health()
        return True

    async def _report_health(self) -> None:
        healthy = self._health.healthy
        if healthy == self._reported_healthy:
            return
        self._reported_healthy = healthy
        if self._on_store_health is not None:
            await self._on_store_health(healthy)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Transaction]:
        """The store's transaction; a commit tells the health tracker that writes work."""
        async with self._store.transaction() as tx:
            yield tx
        self._health.succeeded(self._clock.now())

    async def _record(
        self,
        name: str,
        transition: Callable[[Domain, datetime], Domain],
        extra: Callable[[Transaction], Awaitable[None]] | None = None,
    ) -> Domain | None:
        """Apply ``transition`` to the latest row inside a transaction; write only real changes.

        Most ticks change nothing: that is decided on the committed row first, without
        taking the store's single write lock.
        """
        now = self._clock.now()
        if extra is None:
            current = await self._store.get_domain(name)
            if current is None:
                return None
            if not lifecycle.changed(current, transition(current, now)):
                return current
        async with self._transaction() as tx:
            latest = await tx.get_domain(name)
            if latest is None:
                return None
            if extra is not None:
                await extra(tx)
            return await outbox.save(tx, latest, transition(latest, now))

    async def step(self, name: str) -> None:
        """One unit of work for a due domain."""
        domain = await self._record(name, lifecycle.tick)
        if domain is None:
            return
        now = self._clock.now()
        if not lifecycle.is_due_for_order(domain, now):
            if lifecycle.is_due_for_delegation_check(domain, now):
                await self._recheck_delegation(domain)
            return
        dns01 = lifecycle.uses_dns01(domain)
        missing = ""
        if self._issuer is None:
            missing = "CERTBROKER_ACME_DIRECTORY"
        elif dns01 and self._dns01 is None:
            missing = "CERTBROKER_DNS01_ZONE (needed for wildcards and DNS-01)"
        elif not dns01 and self._targets is None:
            missing = "CERTBROKER_PLATFORM_TARGETS"
        if missing:
            await self._record(
                name,
                lambda d, now: lifecycle.held_back(
                    d,
                    "NOT_CONFIGURED",
                    f"{missing} is not set: the broker cannot order certificates",
                    now + timedelta(days=1),
                    now,
                ),
            )
            return
        order = await self._store.get_order(name)
        found: Finding = _unchanged
        if order is None:
            checked = await (self._preflight_dns01(domain) if dns01 else self._preflight(domain))
            if checked is None:
                return
            found = checked
        assert self._issuer is not None
        try:
            await self._issuer.start()
        except Exception as error:
            problem = error if isinstance(error, AcmeProblem) else classify(error)
            log.warning("ACME account not ready: %s", problem)
            await self._record(
                name,
                lambda d, now: lifecycle.failed(
                    d, problem.reason, f"the CA is unreachable: {problem.detail}", now
                ),
            )
            return
        await self._order(domain, order, found)

    async def _preflight(self, domain: Domain) -> Finding | None:
        """DNS and CAA must pass locally before the CA hears of the domain."""
        assert self._targets is not None
        name = domain.name
        pointed = await self._dns.points_to_platform(name, self._targets)
        now = self._clock.now()
        observation = to_observation(pointed, now)
        if not pointed.points:
            interval = self._policy.dns_check_interval
            await self._record(
                name,
                lambda d, now: lifecycle.dns_not_ready(
                    d, observation, pointed.reason, pointed.message, now, interval
                ),
            )
            return None

        def found(d: Domain, now: datetime) -> Domain:
            return lifecycle.dns_ready(d, observation)

        if not await self._caa_allows(domain, found):
            return None
        return found  # written with the order's start, one write instead of two

    async def _caa_allows(
        self, domain: Domain, found_so_far: Callable[[Domain, datetime], Domain]
    ) -> bool:
        """CAA must allow our CA; if not, back off without ordering (the customer must act).

        ``found_so_far`` records what the earlier checks saw (DNS answers, delegation),
        so the refusal and those facts land in one write.
        """
        caa = await self._dns.caa_allows(
            domain.name, self._policy.caa_identity, wildcard=domain.is_wildcard
        )
        if caa.allowed:
            return True
        await self._record(
            domain.name,
            lambda d, now: lifecycle.failed(
                found_so_far(d, now),
                caa.reason,
                caa.message,
                now,
                state=None
                if lifecycle.is_valid_at(d.le_cert, now)
                else LetsEncryptState.PENDING_DNS,
            ),
        )
        return False

    def _label(self, domain: Domain) -> str:
        """The domain's delegation label: stored with it since it was added.

        A DNS-01 domain without one (none exist: creation and migration 003 set
        it) gets its owner-bound label, the same on every replica; never one
        derived from the name alone.
        """
        if domain.delegation_label:
            return domain.delegation_label
        if self._labels is None:
            raise RuntimeError(f"{domain.name} has no delegation label and no label key is set")
        return self._labels.label(domain.app, domain.name)

    async def _delegation_state(self, domain: Domain) -> tuple[bool, str, str]:
        """Is ``_acme-challenge.<base>`` a CNAME to this domain's record? ``(ok, reason, message)``.

        Raises ``DnsLookupError`` when the DNS cannot tell.
        """
        assert self._dns01 is not None
        zone = self._dns01.zone
        label = self._label(domain)
        found = await self._dns.cname_target(delegation.challenge_name(domain.name))
        if found == delegation.target(label, zone):
            return True, "", ""
        reason = "DNS01_DELEGATION_MISSING" if found is None else "DNS01_DELEGATION_WRONG"
        return False, reason, delegation.instruction(domain.name, label, zone, found)

    def _ask_for_delegation(
        self, domain: Domain, reason: str, message: str
    ) -> Callable[[Domain, datetime], Domain]:
        assert self._dns01 is not None
        record = delegation.record(domain.name, self._label(domain), self._dns01.zone)
        interval = self._policy.dns_check_interval
        return lambda d, now: lifecycle.action_required(
            d, record, now, interval, reason=reason, message=message
        )

    async def _preflight_dns01(self, domain: Domain) -> Finding | None:
        """Delegation, CAA and our own update rights must hold before the CA hears of it."""
        assert self._dns01 is not None
        name = domain.name
        interval = self._policy.dns_check_interval
        try:
            ok, reason, message = await self._delegation_state(domain)
        except DnsLookupError as error:
            why, detail = error.reason, error.message
            await self._record(
                name,
                lambda d, now: lifecycle.delegation_check_failed(d, why, detail, now, interval),
            )
            return None
        if not ok:
            await self._record(name, self._ask_for_delegation(domain, reason, message))
            return None
        if not await self._caa_allows(domain, lifecycle.delegated):
            return None
        try:
            await self._dns01.check_access(self._label(domain))
        except AcmeProblem as problem:
            log.warning("DNS-01 updates for %s fail: %s", name, problem)
            why, detail = problem.reason, problem.detail
            await self._record(
                name,
                lambda d, now: lifecycle.failed(lifecycle.delegated(d, now), why, detail, now),
            )
            return None
        return lifecycle.delegated

    async def _recheck_delegation(self, domain: Domain) -> None:
        """A resting DNS-01 domain: is the delegation still there for the next renewal?"""
        name = domain.name
        interval = self._policy.dns_check_interval
        if self._dns01 is None:
            message = "CERTBROKER_DNS01_ZONE is not set: the delegation cannot be checked"
            await self._record(
                name,
                lambda d, now: lifecycle.delegation_check_failed(
                    d, "NOT_CONFIGURED", message, now, lifecycle.DELEGATION_RECHECK
                ),
            )
            return
        try:
            ok, reason, message = await self._delegation_state(domain)
        except DnsLookupError as error:
            why, detail = error.reason, error.message
            await self._record(
                name,
                lambda d, now: lifecycle.delegation_check_failed(d, why, detail, now, interval),
            )
            return
        if ok:
            await self._record(name, lifecycle.delegation_confirmed)
        else:
            log.info("delegation of %s is gone (%s)", name, reason)
            await self._record(name, self._ask_for_delegation(domain, reason, message))

    async def _reserve(self, domain: Domain, found: Finding) -> PendingOrder | None:
        """Count the quotas and, if a slot is free, persist the order in the same transaction."""
        names = domain.order_names
        registered = registered_domain(domain.name)
        key_pem = await asyncio.to_thread(generate_private_key, domain.key_algorithm)
        now = self._clock.now()
        since = now - quota.WINDOW
        async with self._transaction() as tx:
            stored = await tx.get_domain(domain.name)
            if stored is None:
                return None
            latest = found(stored, now)
            block = quota.check(
                await tx.registered_domain_usage(registered, since),
                self._policy.quota_per_registered_domain,
                now,
                "QUOTA_REGISTERED_DOMAIN",
                f"registered domain {registered}",
            ) or quota.check(
                await tx.name_set_usage(names, since),
                self._policy.quota_per_name_set,
                now,
                "QUOTA_NAME_SET",
                f"the names {', '.join(names)}",
            )
            if block is not None:
                held = lifecycle.held_back(latest, block.reason, block.message, block.until, now)
                await outbox.save(tx, stored, held)
                return None
            order = PendingOrder(
                domain=domain.name,
                registered_domain=registered,
                names=names,
                key_sealed=self._sealer.seal(key_pem, domain.name),
                started_at=now,
            )
            await tx.put_order(order)
            await outbox.save(tx, stored, lifecycle.order_started(latest, now))
        return order

    async def _order(self, domain: Domain, order: PendingOrder | None, found: Finding) -> None:
        assert self._issuer is not None
        name = domain.name
        if order is not None and not order.order_url:
            order = None  # crashed before the CA answered: nothing was ordered
            async with self._transaction() as tx:
                await tx.delete_order(name)
        if order is None:
            order = await self._reserve(domain, found)
            if order is None:
                return
        key_pem = self._sealer.open(order.key_sealed, name)
        dns01 = lifecycle.uses_dns01(domain)
        label = self._label(domain) if dns01 else ""
        try:
            if order.order_url:
                try:
                    issued = await self._issuer.resume(
                        order.order_url,
                        list(order.names),
                        key_pem,
                        dns01=dns01,
                        dns01_label=label,
                    )
                except AcmeProblem as problem:
                    if problem.reason != "ACME_ORDER_INVALID":
                        raise
                    log.info("order for %s cannot be resumed (%s); ordering anew", name, problem)
                    issued = await self._issuer.issue(
                        list(order.names),
                        key_pem,
                        dns01=dns01,
                        dns01_label=label,
                        on_order_created=self._saver(order),
                    )
            else:
                issued = await self._issuer.issue(
                    list(order.names),
                    key_pem,
                    dns01=dns01,
                    dns01_label=label,
                    on_order_created=self._saver(order),
                )
        except AcmeProblem as problem:
            log.warning("order for %s failed: %s", name, problem.reason)
            await self._order_failed(name, problem)
            return
        await self._store_certificate(order, key_pem, issued.chain_pem)

    async def _order_failed(self, name: str, problem: AcmeProblem) -> None:
        """Drop the order row (a fresh order next time) and back off."""

        async def drop(tx: Transaction) -> None:
            await tx.delete_order(name)

        await self._record(
            name,
            lambda d, now: lifecycle.failed(
                d, problem.reason, problem.detail or problem.reason, now, problem.retry_after
            ),
            extra=drop,
        )

    def _saver(self, order: PendingOrder) -> Callable[[str], Awaitable[None]]:
        async def save(url: str) -> None:
            async with self._transaction() as tx:
                await tx.put_order(replace(order, order_url=url))

        return save

    async def _store_certificate(self, order: PendingOrder, key_pem: bytes, chain_pem: str) -> None:
        info = replace(certificate_info(chain_pem), received_at=self._clock.now())
        name = order.domain
        now = self._clock.now()
        async with self._transaction() as tx:
            latest = await tx.get_domain(name)
            await tx.delete_order(name)
            await tx.record_issuance(name, order.registered_domain, order.names, info.serial, now)
            if latest is None:
                return  # removed while ordering: the issuance still counts for quotas
            cert = await tx.add_certificate(
                NewCertificate(
                    domain=name,
                    source=Source.LETS_ENCRYPT,
                    info=info,
                    key_sealed=self._sealer.seal(key_pem, name),
                )
            )
            await outbox.save(tx, latest, lifecycle.issued(latest, cert, now))
        log.info("issued %s (serial %s, until %s)", name, info.serial, info.not_after)
