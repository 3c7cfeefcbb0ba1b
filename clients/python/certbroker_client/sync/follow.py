"""The loop both sync agents share: follow the broker, keep one proxy in step.

A sync agent runs beside a proxy that cannot speak gRPC (HAProxy, nginx) and
feeds it the certificates the broker streams. The two agents differ only in
how a certificate reaches the proxy (HAProxy's admin socket, files nginx loads
per handshake); what to do with the stream is the same and lives here once:

- follow ``WatchStatus`` with ``include_keys`` through ``BrokerClient.watch()``,
  which resumes after every break;
- collect a snapshot whole and only then *reconcile* the proxy with it: add
  what is missing, replace what changed, remove what the agent owns and the
  broker no longer serves. A snapshot cut half-way and restarted is started
  over (``BrokerClient.snapshot_streams``), so a name removed in between is
  not kept by mistake;
- apply each live change as it comes, and skip events that do not change the
  served material (status-only updates);
- keep serving what the proxy has while the broker is away: nothing is
  removed because the control plane is unreachable;
- repair the proxy when it loses state: a target that cannot be reached is
  marked dirty and reconciled with backoff, a target that says it restarted
  (HAProxy's runtime changes live in memory only) is reconciled at once, and
  every target is reconciled every ``resync_interval`` regardless.

A :class:`SyncTarget` knows nothing about the broker; the :class:`Syncer`
knows nothing about proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client.client import BrokerClient, BrokerError

__all__ = [
    "WILDCARD_PREFIX",
    "Material",
    "MaterialRejected",
    "ReportHook",
    "SyncTarget",
    "Syncer",
    "TargetUnavailable",
    "UnsafeName",
    "file_stem",
]

log = logging.getLogger("certbroker.sync")

SERVING_SOURCES: Final = frozenset(
    {domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT, domain_pb2.CERTIFICATE_SOURCE_CUSTOM}
)
# ``*.example.com`` is stored as ``_wildcard.example.com``: a ``*`` in a file or
# store name is a glob hazard in every shell an operator types into, and the
# broker accepts only LDH labels, so no real domain can start with ``_``.
WILDCARD_PREFIX: Final = "_wildcard."
_LDH_NAME: Final = re.compile(r"^[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63})+$")


class UnsafeName(ValueError):
    """A domain name that cannot be used as a file or store name (never from a sane broker)."""


class TargetUnavailable(Exception):
    """The proxy cannot be reached or configured right now; a later reconcile repairs it."""


class MaterialRejected(Exception):
    """The proxy refused one certificate; it keeps what it served before for that name."""


def file_stem(name: str) -> str:
    """The file or store name of a domain: itself, or ``_wildcard.<parent>`` for ``*.<parent>``.

    Names are checked strictly (lowercase LDH labels, 253 characters at most)
    because they become paths and socket commands: a ``/``, a space or a newline
    must never reach either, whatever the broker sends.
    """
    wildcard = name.startswith("*.")
    bare = name[2:] if wildcard else name
    if len(name) > 253 or not _LDH_NAME.match(bare):
        raise UnsafeName(f"refusing to use {name!r} as a file name")
    return WILDCARD_PREFIX + bare if wildcard else bare


def name_of_stem(stem: str) -> str | None:
    """The domain a file or store stem stands for (None if it is not one of ours)."""
    bare = stem.removeprefix(WILDCARD_PREFIX)
    if len(stem) > 253 + len(WILDCARD_PREFIX) or not _LDH_NAME.match(bare):
        return None
    return "*." + bare if stem.startswith(WILDCARD_PREFIX) else bare


def _pem_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class Material:
    """What the broker says one name serves: its chain and key, and where they come from."""

    name: str
    chain_pem: str
    key_pem: str
    source: int
    revision: int

    @cached_property
    def digest(self) -> str:
        """Identifies the material; equal digests need no work at the proxy."""
        return hashlib.sha256(self.chain_pem.encode() + b"\0" + self.key_pem.encode()).hexdigest()

    @cached_property
    def bundle(self) -> str:
        """Chain then key, one PEM, no blank lines, final newline.

        Without blank lines because HAProxy's runtime API ends a payload at the
        first empty line; nginx and OpenSSL do not care either way.
        """
        return "\n".join(_pem_lines(self.chain_pem) + _pem_lines(self.key_pem)) + "\n"

    @cached_property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem.encode())

    @property
    def leaf_sha1(self) -> str:
        """Upper-case hex, as HAProxy's ``show ssl cert`` prints it."""
        return self.leaf.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - HAProxy's id

    @property
    def leaf_sha256(self) -> str:
        return self.leaf.fingerprint(hashes.SHA256()).hex()

    @property
    def source_name(self) -> str:
        return "custom" if self.source == domain_pb2.CERTIFICATE_SOURCE_CUSTOM else "letsencrypt"


def material_of(event: broker_pb2.WatchEvent) -> Material | None:
    """The material an event says to serve, or None (nothing to serve, or no key sent)."""
    if not event.HasField("serving") or event.serving.source not in SERVING_SOURCES:
        return None
    serving = event.serving
    if not serving.chain_pem or not serving.private_key_pem:
        return None
    return Material(
        name=event.domain.domain,
        chain_pem=serving.chain_pem,
        key_pem=serving.private_key_pem,
        source=serving.source,
        revision=event.revision,
    )


class SyncTarget(Protocol):
    """One proxy, as the follow loop drives it. Calls never overlap (the syncer holds a lock)."""

    kind: str

    async def apply(self, material: Material) -> None:
        """Serve ``material`` for its name from now on (add or replace).

        Raises :class:`TargetUnavailable` or :class:`MaterialRejected`.
        """

    async def remove(self, name: str) -> None:
        """Stop serving ``name`` (nothing if it is not served); may raise TargetUnavailable."""

    async def reconcile(self, desired: Mapping[str, Material]) -> None:
        """Make the proxy serve exactly ``desired`` among the names this agent owns.

        Adds what is missing, replaces what differs, removes what the agent owns
        and ``desired`` lacks; leaves alone what it does not own (the operator's
        default certificate). A rejected certificate is logged and skipped.
        Raises :class:`TargetUnavailable` if the proxy cannot be reached.
        """

    async def drifted(self) -> bool:
        """Cheap check, run often: did the proxy lose what it was given (e.g. a restart)?"""


ReportHook = Callable[[int, int], Awaitable[float | None]]
"""``(applied_revision, domain_count)``: what the agent tells the broker it serves.

Returns the number of seconds until the next report the broker asks for, or
None to keep the configured interval.
"""


class Syncer:
    """Keeps one :class:`SyncTarget` in step with the broker; ``run()`` until cancelled.

    ``desired`` is what the broker says to serve (name -> material), kept in
    memory only: private keys never touch a disk here.
    """

    def __init__(
        self,
        client: BrokerClient,
        target: SyncTarget,
        *,
        apps: Iterable[str] = (),
        domains: Iterable[str] = (),
        idle_timeout: float | None = 60.0,
        max_backoff: float = 3.0,
        check_interval: float = 1.0,
        resync_interval: float = 60.0,
        report_interval: float = 10.0,
        report: ReportHook | None = None,
    ) -> None:
        """``check_interval``: how often ``target.drifted()`` runs (and a dirty target is retried).

        ``resync_interval``: a full reconcile at least this often, whatever
        ``drifted()`` says. ``report`` is called every ``report_interval`` and
        soon after each applied change.
        """
        self.client = client
        self.target = target
        self.desired: dict[str, Material] = {}
        self.ready = asyncio.Event()
        self.reconciles = 0
        self._apps = list(apps)
        self._domains = list(domains)
        self._idle_timeout = idle_timeout
        self._max_backoff = max_backoff
        self._check_interval = check_interval
        self._resync_interval = resync_interval
        self._report_interval = report_interval
        self._report = report
        self._lock = asyncio.Lock()
        self._seen = 0  # the revision ``desired`` reflects
        self._applied = 0  # the revision the proxy reflects (behind while it is dirty)
        self._busy = False
        self._dirty = False
        self._last_reconcile = 0.0
        self._changed = asyncio.Event()
        self._warned_no_keys = False

    @property
    def applied_revision(self) -> int:
        """The broker revision the proxy reflects.

        Between events it follows the stream's heartbeats (nothing was left to
        apply up to them); while an event is being applied, while a snapshot is
        being collected or while the proxy needs repair, it stays at the last
        revision really applied.
        """
        if self.ready.is_set() and not self._busy and not self._dirty:
            return max(self._applied, self.client.last_revision)
        return self._applied

    @property
    def in_sync(self) -> bool:
        """False while the proxy is known to miss changes (unreachable, or restarted)."""
        return self.ready.is_set() and not self._dirty

    async def run(self) -> None:
        """Follow, maintain and report until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow())
            group.create_task(self._maintain())
            if self._report is not None:
                group.create_task(self._report_loop())

    # -- the stream -----------------------------------------------------------------

    async def _follow(self) -> None:
        """Watch forever; a refused watch (bad identity or filter) is logged and retried slowly."""
        while True:
            resume = self._seen if self.ready.is_set() else 0
            try:
                await self._consume(resume)
            except BrokerError as error:
                log.error("watch refused (%s); retrying, the proxy keeps what it serves", error)
                await asyncio.sleep(max(self._max_backoff, 5.0))

    async def _consume(self, after_revision: int) -> None:
        pending: dict[str, Material] | None = None
        attempt = -1
        events = self.client.watch(
            after_revision,
            include_keys=True,
            apps=self._apps,
            domains=self._domains,
            max_backoff=self._max_backoff,
            idle_timeout=self._idle_timeout,
        )
        async for event in events:
            self._busy = True  # before any await: applied_revision must not run ahead
            try:
                if event.type in (
                    broker_pb2.EVENT_TYPE_SNAPSHOT,
                    broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE,
                ):
                    if pending is None or attempt != self.client.snapshot_streams:
                        pending, attempt = {}, self.client.snapshot_streams
                    if event.type == broker_pb2.EVENT_TYPE_SNAPSHOT:
                        found = self._material(event)
                        if found is not None:
                            pending[found.name] = found
                        continue
                    await self._resync(pending, event.revision)
                    pending = None
                    continue
                if pending is not None:
                    continue  # the broker never interleaves; be safe if it ever does
                if event.type == broker_pb2.EVENT_TYPE_DOMAIN_UPDATED:
                    found = self._material(event)
                    if found is None:
                        await self._drop(event.domain.domain, event.revision)
                    else:
                        await self._put(found)
                elif event.type == broker_pb2.EVENT_TYPE_DOMAIN_REMOVED:
                    await self._drop(event.domain.domain, event.revision)
                self._seen = max(self._seen, event.revision)
                if not self._dirty:
                    self._applied = self._seen
            finally:
                self._busy = False

    def _material(self, event: broker_pb2.WatchEvent) -> Material | None:
        found = material_of(event)
        lacks_key = (
            found is None
            and event.HasField("serving")
            and event.serving.source in SERVING_SOURCES
            and not event.serving.private_key_pem
        )
        if lacks_key and not self._warned_no_keys:
            self._warned_no_keys = True
            log.error(
                "the broker sends certificates without keys: this identity lacks the "
                "router role (CERTBROKER_ROLES), or the connection is not mTLS"
            )
        if found is None:
            return None
        try:
            file_stem(found.name)
        except UnsafeName as error:
            log.error("revision %d: %s", event.revision, error)
            return None
        return found

    async def _resync(self, snapshot: dict[str, Material], revision: int) -> None:
        async with self._lock:
            self.desired = snapshot
            self._seen = revision
            await self._reconcile_locked()
        log.info(
            "%s: snapshot at revision %d: %d names%s",
            self.target.kind,
            revision,
            len(snapshot),
            "" if not self._dirty else " (the proxy is not reachable yet; retrying)",
        )
        self.ready.set()
        self._changed.set()

    async def _put(self, material: Material) -> None:
        async with self._lock:
            current = self.desired.get(material.name)
            self.desired[material.name] = material
            if current is not None and current.digest == material.digest:
                return  # a status-only change: the proxy already serves this
            if self._dirty:
                return  # the next reconcile applies it with everything else
            try:
                await self.target.apply(material)
            except TargetUnavailable as error:
                self._mark_dirty(error)
                return
            except MaterialRejected as error:
                log.error(
                    "%s refused the certificate of %s at revision %d: %s",
                    self.target.kind,
                    material.name,
                    material.revision,
                    error,
                )
                return
        log.info(
            "%s: revision %d: %s now serves its %s certificate",
            self.target.kind,
            material.revision,
            material.name,
            material.source_name,
        )
        self._changed.set()

    async def _drop(self, name: str, revision: int) -> None:
        async with self._lock:
            if self.desired.pop(name, None) is None:
                return
            if self._dirty:
                return
            try:
                await self.target.remove(name)
            except TargetUnavailable as error:
                self._mark_dirty(error)
                return
        log.info("%s: revision %d: %s no longer served", self.target.kind, revision, name)
        self._changed.set()

    # -- repair -----------------------------------------------------------------------

    def _mark_dirty(self, error: Exception) -> None:
        if not self._dirty:
            log.warning(
                "%s unavailable (%s): will reconcile when it is back", self.target.kind, error
            )
        self._dirty = True

    async def _reconcile_locked(self) -> None:
        self._last_reconcile = time.monotonic()
        try:
            await self.target.reconcile(dict(self.desired))
        except TargetUnavailable as error:
            self._mark_dirty(error)
            return
        self.reconciles += 1
        self._applied = self._seen
        if self._dirty:
            log.info("%s reconciled: %d names", self.target.kind, len(self.desired))
        self._dirty = False

    async def _maintain(self) -> None:
        """Check the proxy often, repair it when it drifted or was unreachable."""
        failures = 0
        while True:
            delay = self._check_interval
            if self._dirty:
                delay = max(self._check_interval, min(self._max_backoff, 0.2 * 2**failures))
            await asyncio.sleep(delay)
            if not self.ready.is_set():
                continue
            due = self._dirty or (time.monotonic() - self._last_reconcile >= self._resync_interval)
            if not due:
                try:
                    due = await self.target.drifted()
                except TargetUnavailable as error:
                    self._mark_dirty(error)
                    continue
                if due:
                    log.warning("%s lost its state (restarted?): reconciling", self.target.kind)
            if not due:
                continue
            async with self._lock:
                await self._reconcile_locked()
            failures = failures + 1 if self._dirty else 0
            if not self._dirty:
                self._changed.set()

    # -- reports ----------------------------------------------------------------------

    async def _report_loop(self) -> None:
        """Report every ``report_interval`` and soon after each change; failures are logged."""
        assert self._report is not None
        await self.ready.wait()
        interval = self._report_interval
        while True:
            self._changed.clear()
            try:
                asked = await self._report(self.applied_revision, len(self.desired))
            except Exception as error:  # a report must never stop the agent
                log.warning("report to the broker failed: %s", error)
            else:
                if asked is not None and asked > 0:
                    interval = asked
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._changed.wait()
