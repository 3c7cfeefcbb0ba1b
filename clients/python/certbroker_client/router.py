"""Serve the broker's certificates by SNI: the library a router embeds.

A router terminates TLS for every custom domain on the platform. It must not
re-implement the watch protocol (snapshot, resume, compaction, too-slow
streams) nor the fiddly parts of TLS by SNI (wildcard matching, swapping a
certificate without a window where the name has none). This module does both:

- :class:`CertificateMap` holds ``server name -> ready ssl.SSLContext`` and
  gives an ``sni_callback`` for the listening context. Each context is built
  completely (chain and key loaded, key checked against the leaf) *before* it
  replaces the previous one, with a single dict assignment, so a handshake
  sees either the old certificate or the new one, never none.
- :class:`RouterWatcher` follows ``WatchStatus`` with ``include_keys`` (the
  broker sends keys only to the ``router`` role over mTLS) and applies each
  event to the map. It resumes from the revision it serves after any break;
  on ``REVISION_COMPACTED`` it re-snapshots into a *new* map and swaps it in
  whole at ``SNAPSHOT_COMPLETE``, so no name disappears mid-resync. While the
  broker is unreachable it keeps serving what it has: a broker outage must
  never take HTTPS down.

Why its own stream loop rather than ``BrokerClient.watch()``: a router must
know where each stream *starts*, to throw away a half-built snapshot when a
stream breaks before ``SNAPSHOT_COMPLETE`` (otherwise a domain removed between
the two attempts would stay served forever). ``watch()`` hides restarts by
design; the loop here is small and reuses the client's channel set-up and
error decoding.

Private keys never touch a disk: OpenSSL's ``load_cert_chain`` only reads
files, so the PEM is written to an anonymous in-memory file
(``memfd_create``) and loaded from ``/proc/self/fd/N``; where that does not
exist, a private 0700 temporary directory with 0600 files deleted right after
loading is used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from certbroker_client.client import BrokerError, TlsFiles

__all__ = [
    "CertificateMap",
    "MapChange",
    "RouterWatcher",
    "Served",
    "build_context",
    "default_context_factory",
    "lookup_names",
]

log = logging.getLogger(__name__)

REVISION_COMPACTED: Final = "REVISION_COMPACTED"
# Stream ends after which the watcher reconnects and resumes. Anything else
# (PERMISSION_DENIED: this identity is not a router; INVALID_ARGUMENT: a bad
# filter) is a configuration error, retried slowly and logged loudly: a
# router never stops serving because of its control plane.
_RESUMABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
_SERVING_SOURCES: Final = frozenset(
    {domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT, domain_pb2.CERTIFICATE_SOURCE_CUSTOM}
)

ContextFactory = Callable[[], ssl.SSLContext]


def default_context_factory() -> ssl.SSLContext:
    """A server context with the settings every per-name context shares.

    TLS 1.2 minimum, no renegotiation, ALPN ``http/1.1``. The per-name contexts and the
    listening one must agree on these, because OpenSSL takes some settings
    from the context the handshake started with and others from the one the
    SNI callback switched to.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    return context


@contextlib.contextmanager
def _pem_paths(chain_pem: str, key_pem: str) -> Iterator[tuple[str, str]]:
    """Paths OpenSSL can read the chain and key from, gone when the block ends."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            for data in (chain_pem, key_pem):
                fd = memfd_create("certbroker-pem", getattr(os, "MFD_CLOEXEC", 0))
                fds.append(fd)
                os.write(fd, data.encode())
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    folder = tempfile.mkdtemp(prefix="certbroker-")  # 0700, only this user
    try:
        paths = []
        for name, data in (("chain.pem", chain_pem), ("key.pem", key_pem)):
            path = os.path.join(folder, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
            paths.append(path)
        yield paths[0], paths[1]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_context(
    chain_pem: str, key_pem: str, factory: ContextFactory = default_context_factory
) -> ssl.SSLContext:
    """A ready server context for one certificate (``ssl.SSLError`` if the key does not match)."""
    context = factory()
    with _pem_paths(chain_pem, key_pem) as (chain_path, key_path):
        context.load_cert_chain(chain_path, key_path)
    return context


def lookup_names(server_name: str) -> tuple[str, ...]:
    """The map keys that may serve ``server_name``, best first (RFC 6125, section 6.4.3).

    The exact name, then the wildcard that replaces its whole leftmost
    label: ``a.example.test`` -> ``*.example.test``. A wildcard covers one
    label only, so ``a.b.example.test`` never matches ``*.example.test`` and
    ``example.test`` never matches it either. No wildcard is tried for a
    two-label name (``*.test`` would cover a whole top-level domain).
    """
    name = server_name.strip().rstrip(".").lower()
    if not name:
        return ()
    first, dot, rest = name.partition(".")
    if dot and first and "." in rest:
        return (name, "*." + rest)
    return (name,)


@dataclass(frozen=True)
class Served:
    """What the router serves for one name: the context and facts to show or check."""

    name: str
    context: ssl.SSLContext = field(repr=False, compare=False)
    source: int
    revision: int
    sha256_fingerprint: str
    not_after: datetime
    material_digest: str = field(repr=False)


@dataclass(frozen=True)
class MapChange:
    """One applied change, for ``on_change``: what changed and at which revision.

    ``resync`` is true when a whole snapshot was swapped in (first start or
    after ``REVISION_COMPACTED``); ``updated`` then lists every name served.
    """

    revision: int
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    resync: bool = False


def _material_digest(chain_pem: str, key_pem: str) -> str:
    return hashlib.sha256(chain_pem.encode() + b"\0" + key_pem.encode()).hexdigest()


class CertificateMap:
    """``server name -> Served``, read by handshakes, written by the watcher.

    Reads (the SNI callback) take no lock: single dict operations are atomic
    in CPython, and a resync replaces the whole dict with one assignment.
    The callback may therefore run in any thread, e.g. a threaded server's.
    """

    def __init__(self, *, context_factory: ContextFactory = default_context_factory) -> None:
        """``context_factory`` makes each context (TLS versions, ciphers, ALPN)."""
        self._factory = context_factory
        self._entries: dict[str, Served] = {}

    # -- reading ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> Mapping[str, Served]:
        """A read-only view of the current entries (keys are domain names, ``*.`` for wildcards)."""
        return dict(self._entries)

    def get(self, name: str) -> Served | None:
        """The entry stored under ``name`` exactly (no wildcard matching)."""
        return self._entries.get(name)

    def lookup(self, server_name: str | None) -> Served | None:
        """The entry serving ``server_name`` (exact name first, then its wildcard)."""
        if not server_name:
            return None
        entries = self._entries  # one snapshot of the reference for both probes
        for key in lookup_names(server_name):
            found = entries.get(key)
            if found is not None:
                return found
        return None

    def sni_callback(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        """For ``SSLContext.sni_callback``: switch the handshake to the name's context.

        Unknown names (and clients that send no SNI) end with a fatal
        ``unrecognized_name`` alert: a clean refusal rather than a confusing
        "no shared cipher". For a default certificate instead, use
        :meth:`server_context` (or :meth:`make_sni_callback` with ``fallback``).
        """
        found = self.lookup(server_name)
        if found is not None:
            connection.context = found.context
            return None
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME

    def make_sni_callback(
        self, *, fallback: bool
    ) -> Callable[[ssl.SSLObject | ssl.SSLSocket, str | None, ssl.SSLContext], int | None]:
        """An SNI callback; ``fallback``: unknown names stay on the listening context's certificate.

        Per listener rather than per map, so one map can feed several
        listeners with different defaults.
        """
        if not fallback:
            return self.sni_callback

        def callback(
            connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
        ) -> int | None:
            found = self.lookup(server_name)
            if found is not None:
                connection.context = found.context
            return None

        return callback

    def server_context(
        self, default_cert: Path | None = None, default_key: Path | None = None
    ) -> ssl.SSLContext:
        """A listening context using this map by SNI, with a default certificate if given."""
        context = self._factory()
        if default_cert is not None:
            context.load_cert_chain(default_cert, default_key)
        context.sni_callback = self.make_sni_callback(fallback=default_cert is not None)
        return context

    # -- writing (the watcher) --------------------------------------------------

    def build(self, name: str, serving: broker_pb2.ServingMaterial, revision: int) -> Served:
        """Build a complete entry; the map is untouched (``ValueError``/``ssl.SSLError`` if bad).

        An unchanged chain and key reuse the existing context: a resync of
        thousands of names then costs a digest each, not a TLS context each.
        """
        digest = _material_digest(serving.chain_pem, serving.private_key_pem)
        current = self._entries.get(name)
        leaf = x509.load_pem_x509_certificate(serving.chain_pem.encode())
        if current is not None and current.material_digest == digest:
            context = current.context
        else:
            context = build_context(serving.chain_pem, serving.private_key_pem, self._factory)
        return Served(
            name=name,
            context=context,
            source=serving.source,
            revision=revision,
            sha256_fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
            not_after=leaf.not_valid_after_utc.astimezone(UTC),
            material_digest=digest,
        )

    def put(self, entry: Served) -> None:
        self._entries[entry.name] = entry

    def remove(self, name: str) -> bool:
        return self._entries.pop(name, None) is not None

    def replace_all(self, entries: Mapping[str, Served]) -> tuple[str, ...]:
        """Swap in a whole new map in one assignment; returns the names that went away."""
        gone = tuple(sorted(set(self._entries) - set(entries)))
        self._entries = dict(entries)
        return gone


def _serves(event: broker_pb2.WatchEvent) -> bool:
    return event.HasField("serving") and event.serving.source in _SERVING_SOURCES


class RouterWatcher:
    """Keeps a :class:`CertificateMap` in step with the broker's ``WatchStatus`` stream.

    ``revision`` is the store revision the map reflects. ``run()`` follows the
    stream until cancelled; build the watcher, start ``run()`` as a task, and
    serve from ``certificates`` right away (names appear as the first snapshot
    arrives; ``ready`` is set when it is complete).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        certificates: CertificateMap | None = None,
        *,
        apps: Iterable[str] = (),
        domains: Iterable[str] = (),
        on_change: Callable[[MapChange], None] | None = None,
        idle_timeout: float | None = 60.0,
        max_backoff: float = 3.0,
    ) -> None:
        """``idle_timeout``: a stream silent this long (no event, no heartbeat) counts as dead.

        Set it to a few of the broker's heartbeat intervals (15 s by default)
        so a broker host that vanished without closing TCP is noticed.
        """
        self.certificates = certificates if certificates is not None else CertificateMap()
        self._channel = channel
        self._stub: Any = broker_pb2_grpc.CertificateBrokerServiceStub(channel)  # type: ignore[no-untyped-call]
        self._apps = list(apps)
        self._domains = list(domains)
        self._on_change = on_change
        self._idle_timeout = idle_timeout
        self._max_backoff = max_backoff
        self._revision = 0
        self._must_snapshot = True
        self._owns_channel = False
        self._revision_changed = asyncio.Condition()
        self.ready = asyncio.Event()
        self.connected = False
        self.resnapshots = 0
        self.reconnects = 0
        self.bad_material = 0
        self.last_error: BrokerError | None = None

    @classmethod
    def connect(cls, addr: str, tls: TlsFiles | None, **kwargs: Any) -> RouterWatcher:
        """A watcher on its own channel to ``addr``; mTLS with ``tls`` (plaintext gets no keys).

        Reconnect backoff is capped at 3 s (gRPC's default grows to 120 s, which
        would leave a router on stale certificates long after the broker came
        back) and keepalive pings detect a dead connection. ``close()`` it after.
        """
        options: list[tuple[str, Any]] = [
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 3000),
            ("grpc.keepalive_time_ms", 20000),
            ("grpc.keepalive_timeout_ms", 10000),
        ]
        if tls is None:
            channel = grpc.aio.insecure_channel(addr, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            channel = grpc.aio.secure_channel(addr, tls.credentials(), options=options)
        watcher = cls(channel, **kwargs)
        watcher._owns_channel = True
        return watcher

    async def close(self) -> None:
        """Close the channel if :meth:`connect` opened it (the map keeps its entries)."""
        if self._owns_channel:
            await self._channel.close(grace=None)

    @property
    def revision(self) -> int:
        """The store revision the served map reflects (0 before the first snapshot)."""
        return self._revision

    async def wait_for_revision(self, revision: int) -> None:
        """Return once the map reflects ``revision`` or later (wrap in ``asyncio.timeout``)."""
        async with self._revision_changed:
            await self._revision_changed.wait_for(lambda: self._revision >= revision)

    async def _set_revision(self, revision: int, *, resync: bool = False) -> None:
        """Move forward (a stale heartbeat never moves back); a resync sets it outright."""
        if revision <= self._revision and not resync:
            return
        self._revision = revision
        async with self._revision_changed:
            self._revision_changed.notify_all()

    def _changed(self, change: MapChange) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(change)
        except Exception:  # a callback bug must not stop certificate updates
            log.exception("on_change callback failed")

    async def run(self) -> None:
        """Follow the broker forever (until cancelled), resuming after every break."""
        attempt = 0
        while True:
            delay_at_least = 0.0
            try:
                progressed = await self._stream_once()
            except grpc.RpcError as err:
                error = BrokerError.from_rpc_error(err)
                self.last_error = error
                progressed = False
                if error.code == grpc.StatusCode.OUT_OF_RANGE and error.reason == (
                    REVISION_COMPACTED
                ):
                    log.warning("revision %d compacted at the broker: re-snapshot", self._revision)
                    self.resnapshots += 1
                    self._must_snapshot = True
                    continue
                if error.code not in _RESUMABLE:
                    log.error("watch refused (%s); retrying, still serving what we have", error)
                    delay_at_least = self._max_backoff
                if error.retry_after is not None:
                    delay_at_least = max(delay_at_least, error.retry_after.total_seconds())
            finally:
                self.connected = False
            self.reconnects += 1
            attempt = 0 if progressed else attempt + 1
            ceiling = min(self._max_backoff, 0.1 * 2**attempt)
            await asyncio.sleep(max(delay_at_least, random.uniform(ceiling / 2, ceiling)))

    async def _stream_once(self) -> bool:
        """One stream, from our revision (or a snapshot); True if it delivered anything."""
        after = 0 if self._must_snapshot else self._revision
        request = broker_pb2.WatchStatusRequest(
            after_revision=after, include_keys=True, apps=self._apps, domains=self._domains
        )
        call = self._stub.WatchStatus(request)
        # A snapshot builds a separate map; entries become visible only at
        # SNAPSHOT_COMPLETE. Dropped (with this function's frame) if the
        # stream breaks first, so a half snapshot never leaks into serving.
        pending: dict[str, Served] | None = {} if after == 0 else None
        progressed = False
        try:
            while True:
                if self._idle_timeout is None:
                    response = await call.read()
                else:
                    try:
                        response = await asyncio.wait_for(call.read(), self._idle_timeout)
                    except TimeoutError:
                        log.warning("watch silent for %gs: reconnecting", self._idle_timeout)
                        return progressed
                if response is grpc.aio.EOF:
                    return progressed
                progressed = True
                self.connected = True
                kind = response.WhichOneof("kind")
                if kind == "heartbeat":
                    if pending is None:
                        await self._set_revision(response.heartbeat.revision)
                    continue
                if kind == "event":
                    pending = await self._apply(response.event, pending)
        finally:
            call.cancel()

    async def _apply(
        self, event: broker_pb2.WatchEvent, pending: dict[str, Served] | None
    ) -> dict[str, Served] | None:
        """Apply one event; returns the pending snapshot map (None once live)."""
        name = event.domain.domain
        if event.type == broker_pb2.EVENT_TYPE_SNAPSHOT:
            if pending is None:
                pending = {}  # defensive: a snapshot we did not ask for starts a new map
            if _serves(event):
                entry = await self._build(name, event)
                if entry is not None:
                    pending[name] = entry
                elif (kept := self.certificates.get(name)) is not None:
                    pending[name] = (
                        kept  # bad material: keep the old certificate through the resync
                    )
            return pending
        if event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
            if pending is not None:
                self.certificates.replace_all(pending)
                self._must_snapshot = False
                await self._set_revision(event.revision, resync=True)
                self.ready.set()
                self._changed(
                    MapChange(event.revision, updated=tuple(sorted(pending)), resync=True)
                )
            return None
        if pending is not None:
            return pending  # live events never arrive mid-snapshot; ignore if they do
        if event.type == broker_pb2.EVENT_TYPE_DOMAIN_UPDATED:
            if _serves(event):
                entry = await self._build(name, event)
                if entry is not None:
                    self.certificates.put(entry)
                    self._changed(MapChange(event.revision, updated=(name,)))
            elif self.certificates.remove(name):
                self._changed(MapChange(event.revision, removed=(name,)))
        elif event.type == broker_pb2.EVENT_TYPE_DOMAIN_REMOVED and self.certificates.remove(name):
            self._changed(MapChange(event.revision, removed=(name,)))
        await self._set_revision(event.revision)
        return None

    async def _build(self, name: str, event: broker_pb2.WatchEvent) -> Served | None:
        """Build off the event loop's thread, so handshakes keep flowing during a big resync."""
        try:
            return await asyncio.to_thread(
                self.certificates.build, name, event.serving, event.revision
            )
        except (ValueError, ssl.SSLError, OSError) as error:
            self.bad_material += 1
            log.error(
                "cannot load the certificate of %s at revision %d: %s", name, event.revision, error
            )
            return None
