"""Serve the broker's certificates by SNI: the library a router embeds.

A router terminates TLS for every custom domain on the platform. It must not
re-implement the watch protocol (snapshot, resume, compaction, too-slow
streams) nor the fiddly parts of TLS by SNI (wildcard matching, swapping a
certificate without a window where the name has none). This module does both:

- :class:`CertificateMap` holds ``server name -> Served`` (the material, kept
  compactly) and gives an ``sni_callback`` for the listening context. The
  ``ssl.SSLContext`` of a name is built on its first handshake and kept in a
  bounded LRU (``max_contexts``), because a context costs ~30 KiB and ~1.2 ms
  (OpenSSL 3 parsing the PEM): built up front for 100,000 names that would be
  ~3 GB and two minutes of CPU after every restart, for names most of which
  see no handshake that hour. An entry replaces the previous one with a single
  dict assignment, so a handshake sees either the old certificate or the new
  one, never none.
- :class:`RouterWatcher` follows ``WatchStatus`` with ``include_keys`` (the
  broker sends keys only to the ``router`` role over mTLS) and applies each
  event to the map. It resumes from the revision it serves after any break;
  on ``REVISION_COMPACTED`` it re-snapshots into a *new* map and swaps it in
  whole at ``SNAPSHOT_COMPLETE``, so no name disappears mid-resync. While the
  broker is unreachable it keeps serving what it has: a broker outage must
  never take HTTPS down. Given a ``router_id`` it also reports the revision it
  has applied (``ReportServing``) periodically and after each change, so the
  broker can tell which routers really serve a domain's current certificate.

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
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import re
import shutil
import ssl
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import grpc
import grpc.aio
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from certbroker_client.client import BrokerClient, BrokerError, TlsFiles

__all__ = [
    "DEFAULT_MAX_CONTEXTS",
    "CertificateMap",
    "MapChange",
    "Material",
    "RouterWatcher",
    "Served",
    "build_context",
    "check_router_id",
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


_ROUTER_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def check_router_id(router_id: str) -> str:
    """The broker's rule for a ``router_id``: 1-128 of ``A-Za-z0-9._:@-`` (else ``ValueError``)."""
    if not _ROUTER_ID.fullmatch(router_id):
        raise ValueError(
            "must be 1-128 characters of A-Z a-z 0-9 . _ : @ - starting with a letter or digit"
        )
    return router_id


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


_KEY_LABELS: Final = {
    label: label for label in ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")
}
# Distinct intermediate chains shared between entries (Let's Encrypt has a handful;
# custom uploads add a few each). Bounded so odd inputs cannot grow it without end.
_MAX_SHARED_CHAINS: Final = 4096
DEFAULT_MAX_CONTEXTS: Final = 1000


def _pem_blocks(text: str, label: str) -> list[bytes]:
    """The DER of each ``label`` PEM block in ``text``, in order (``ValueError`` if malformed)."""
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    blocks = []
    for part in text.split(begin)[1:]:
        body, found, _ = part.partition(end)
        if not found:
            raise ValueError(f"a {label} PEM block has no end line")
        blocks.append(binascii.a2b_base64(body))
    return blocks


def _pem_key(text: str) -> tuple[str, bytes]:
    """The label and DER of the one unencrypted private key block (``ValueError`` if none)."""
    for label in _KEY_LABELS.values():
        if f"-----BEGIN {label}-----" in text:
            blocks = _pem_blocks(text, label)
            if len(blocks) == 1:
                return label, blocks[0]
    raise ValueError("no single unencrypted PEM private key")


def _pem(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


@dataclass(frozen=True, slots=True)
class Material:
    """One certificate as held in memory: DER, the intermediates shared between entries.

    With its entry, ~1.5 KiB a name for a Let's Encrypt-sized ECDSA leaf
    (``bench/router_scale.py``), against ~30 KiB for a built context; the PEM
    OpenSSL needs is rebuilt from it when a context is built.
    """

    leaf: bytes
    intermediates: tuple[bytes, ...]
    key: bytes = field(repr=False)  # DER, in the format it came in
    key_label: str = "PRIVATE KEY"  # its PEM label: PKCS#8, or SEC1/PKCS#1 ("EC/RSA ...")

    def chain_pem(self) -> str:
        return "".join(_pem("CERTIFICATE", der) for der in (self.leaf, *self.intermediates))

    def key_pem(self) -> str:
        return _pem(self.key_label, self.key)


@dataclass(frozen=True, slots=True)
class Served:
    """What the router serves for one name: the material and facts to show or check.

    The ``ssl.SSLContext`` is not here: :meth:`CertificateMap.context_for`
    builds it on demand and keeps the recently used ones.
    """

    name: str
    source: int
    revision: int
    not_after: datetime
    material: Material = field(repr=False, compare=False)
    material_digest: bytes = field(repr=False)

    @property
    def sha256_fingerprint(self) -> str:
        """The leaf's SHA-256 fingerprint, hex (what ``GetStatus`` shows)."""
        return hashlib.sha256(self.material.leaf).hexdigest()

    @property
    def chain_pem(self) -> str:
        """Leaf then intermediates, PEM (for agents that hand it to another server)."""
        return self.material.chain_pem()

    @property
    def key_pem(self) -> str:
        """The private key as PEM, in the format it was sent (PKCS#8, SEC1 or PKCS#1)."""
        return self.material.key_pem()


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


def _check_pair(leaf: x509.Certificate, key_der: bytes) -> None:
    """``ValueError`` unless the private key (DER, any format) belongs to ``leaf``."""
    key = serialization.load_der_private_key(
        key_der,
        password=None,
        # The public halves are compared below; RSA's own consistency check costs
        # ~40 ms a key, and OpenSSL checks the pair again when the context is built.
        unsafe_skip_rsa_key_validation=True,
    )
    if key.public_key() != leaf.public_key():
        raise ValueError("the private key does not belong to the leaf certificate")


def _material_digest(chain_pem: str, key_pem: str) -> bytes:
    return hashlib.sha256(chain_pem.encode() + b"\0" + key_pem.encode()).digest()


class CertificateMap:
    """``server name -> Served``, read by handshakes, written by the watcher.

    Entries hold material only; :meth:`context_for` builds a name's context on
    its first handshake and keeps at most ``max_contexts`` of them, least
    recently used out first. A snapshot of 100,000 names is therefore applied
    without building any context (``builds`` counts them), and the memory of a
    router is its material plus ``max_contexts`` contexts.

    Reads of the entries (the SNI callback) take no lock: single dict
    operations are atomic in CPython, and a resync replaces the whole dict with
    one assignment. The LRU is guarded by a lock held only for dict
    operations, never while a context is built, so the callback may run in any
    thread, e.g. a threaded server's.
    """

    def __init__(
        self,
        *,
        context_factory: ContextFactory = default_context_factory,
        max_contexts: int = DEFAULT_MAX_CONTEXTS,
    ) -> None:
        """``context_factory`` makes each context (TLS versions, ciphers, ALPN).

        ``max_contexts``: built contexts kept (~30 KiB each). A handshake for a
        name outside them builds its context first (~1.2 ms on the handshake's
        thread), so size it to the names that are busy at once.
        """
        if max_contexts < 1:
            raise ValueError("max_contexts must be at least 1")
        self._factory = context_factory
        self.max_contexts = max_contexts
        self._entries: dict[str, Served] = {}
        # name -> (material digest it was built from, its context; None: the build failed)
        self._contexts: OrderedDict[str, tuple[bytes, ssl.SSLContext | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._shared: dict[str, tuple[bytes, ...]] = {}  # intermediates' PEM -> their DER
        self.builds = 0
        self.build_failures = 0
        self.evictions = 0

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

    @property
    def cached_contexts(self) -> int:
        """How many built contexts are held now (at most ``max_contexts``)."""
        return len(self._contexts)

    def is_warm(self, name: str) -> bool:
        """Whether the current entry of ``name`` has its context built."""
        entry = self._entries.get(name)
        with self._lock:
            cached = self._contexts.get(name)
        return entry is not None and cached is not None and cached[0] == entry.material_digest

    def context_for(self, entry: Served) -> ssl.SSLContext:
        """The entry's context: from the LRU, else built now (``ssl.SSLError`` if it cannot be).

        A build that failed is remembered for that material, so a broken entry
        costs one attempt, not one per handshake.
        """
        with self._lock:
            cached = self._contexts.get(entry.name)
            if cached is not None and cached[0] == entry.material_digest:
                self._contexts.move_to_end(entry.name)
                if cached[1] is None:
                    raise ssl.SSLError(f"the certificate of {entry.name} could not be loaded")
                return cached[1]
        try:
            context = self.build_context(entry)
        except (ValueError, ssl.SSLError, OSError) as error:
            log.error(
                "cannot load the certificate of %s (revision %d): %s",
                entry.name,
                entry.revision,
                error,
            )
            self._remember(entry, None)
            raise
        self._remember(entry, context)
        return context

    def build_context(self, entry: Served) -> ssl.SSLContext:
        """Build the entry's context without caching it (counted in ``builds``)."""
        with self._lock:
            self.builds += 1
        try:
            return build_context(
                entry.material.chain_pem(), entry.material.key_pem(), self._factory
            )
        except (ValueError, ssl.SSLError, OSError):
            with self._lock:
                self.build_failures += 1
            raise

    def _remember(self, entry: Served, context: ssl.SSLContext | None) -> None:
        with self._lock:
            if self._entries.get(entry.name) is not entry:
                return  # replaced while we built: the new entry gets its own
            self._contexts[entry.name] = (entry.material_digest, context)
            self._contexts.move_to_end(entry.name)
            while len(self._contexts) > self.max_contexts:
                self._contexts.popitem(last=False)
                self.evictions += 1

    def _switch(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None) -> int:
        """Point the handshake at the name's context: 0 done, else the alert to send."""
        found = self.lookup(server_name)
        if found is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        try:
            connection.context = self.context_for(found)
        except (ValueError, ssl.SSLError, OSError):
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR  # logged once, where the build failed
        return 0

    def sni_callback(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        """For ``SSLContext.sni_callback``: switch the handshake to the name's context.

        Unknown names (and clients that send no SNI) end with a fatal
        ``unrecognized_name`` alert: a clean refusal rather than a confusing
        "no shared cipher". For a default certificate instead, use
        :meth:`server_context` (or :meth:`make_sni_callback` with ``fallback``).
        """
        return self._switch(connection, server_name) or None

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
            self._switch(connection, server_name)
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
        """Check and keep one entry; the map is untouched.

        Bad material raises ``ValueError`` (``UnsupportedAlgorithm`` for a key
        type this OpenSSL cannot load).

        Cheap on purpose, since a snapshot may hold 100,000 names: the PEM is
        decoded and the leaf parsed (~15 µs, no context). Whether the key
        belongs to the leaf is checked here (~30 µs more) only when the entry
        replaces other material, so that bad material keeps the previous
        certificate serving; for a new name OpenSSL checks the pair when its
        context is built, and there was nothing to keep. Material identical
        to the current entry's is reused as it is, so a resync of unchanged
        names costs a digest each.
        """
        digest = _material_digest(serving.chain_pem, serving.private_key_pem)
        current = self._entries.get(name)
        if current is not None and current.material_digest == digest:
            return dataclasses.replace(current, source=serving.source, revision=revision)
        first, end, rest = serving.chain_pem.partition("-----END CERTIFICATE-----")
        leaf_pem = first + end
        blocks = _pem_blocks(leaf_pem, "CERTIFICATE")
        if len(blocks) != 1:
            raise ValueError("the chain does not start with a PEM certificate")
        leaf = x509.load_der_x509_certificate(blocks[0])
        label, key = _pem_key(serving.private_key_pem)
        if current is not None:
            _check_pair(leaf, key)
        return Served(
            name=name,
            source=serving.source,
            revision=revision,
            not_after=leaf.not_valid_after_utc,
            material=Material(blocks[0], self._intermediates(rest), key, _KEY_LABELS[label]),
            material_digest=digest,
        )

    def _intermediates(self, pem: str) -> tuple[bytes, ...]:
        """One copy of each distinct intermediate chain, decoded and parsed once."""
        shared = self._shared.get(pem)
        if shared is not None:
            return shared
        blocks = tuple(_pem_blocks(pem, "CERTIFICATE"))
        for der in blocks:
            x509.load_der_x509_certificate(der)  # refuse garbage now, not at a handshake
        if len(self._shared) < _MAX_SHARED_CHAINS:
            self._shared[pem] = blocks
        return blocks

    def put(self, entry: Served, *, context: ssl.SSLContext | None = None) -> None:
        """Serve ``entry`` from now on; ``context``: its context, built ahead (see ``prepare``)."""
        with self._lock:
            self._entries[entry.name] = entry
            cached = self._contexts.get(entry.name)
            if context is not None:
                self._contexts[entry.name] = (entry.material_digest, context)
                self._contexts.move_to_end(entry.name)
                while len(self._contexts) > self.max_contexts:
                    self._contexts.popitem(last=False)
                    self.evictions += 1
            elif cached is not None and cached[0] != entry.material_digest:
                del self._contexts[entry.name]  # the old key leaves memory with its context

    def remove(self, name: str) -> bool:
        with self._lock:
            self._contexts.pop(name, None)
            return self._entries.pop(name, None) is not None

    def replace_all(self, entries: Mapping[str, Served]) -> tuple[str, ...]:
        """Swap in a whole new map in one assignment; returns the names that went away."""
        fresh = dict(entries)
        gone = tuple(sorted(set(self._entries) - set(fresh)))
        with self._lock:
            self._entries = fresh
            for name, (digest, _) in list(self._contexts.items()):
                entry = fresh.get(name)
                if entry is None or entry.material_digest != digest:
                    del self._contexts[name]
        return gone


def _serves(event: broker_pb2.WatchEvent) -> bool:
    return event.HasField("serving") and event.serving.source in _SERVING_SOURCES


class RouterWatcher:
    """Keeps a :class:`CertificateMap` in step with the broker's ``WatchStatus`` stream.

    ``revision`` is the store revision the map reflects. ``run()`` follows the
    stream until cancelled; build the watcher, start ``run()`` as a task, and
    serve from ``certificates`` right away (names appear as the first snapshot
    arrives; ``ready`` is set when it is complete).

    With a ``router_id``, ``run()`` also reports ``(router_id, revision, names
    served)`` to the broker: at once, every report interval (the broker's,
    10 s by default, or ``report_interval``) and ``report_debounce`` seconds
    after a change was applied (a burst of changes makes one report). A
    failed report is logged and retried at the next one; it never affects
    serving.
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
        router_id: str | None = None,
        report_interval: float | None = None,
        report_debounce: float = 0.5,
        batch_snapshot: bool = True,
    ) -> None:
        """``idle_timeout``: a stream silent this long (no event, no heartbeat) counts as dead.

        Set it to a few of the broker's heartbeat intervals (15 s by default)
        so a broker host that vanished without closing TCP is noticed.
        ``router_id`` (e.g. the hostname) turns reporting on; ``report_interval``
        overrides the interval the broker asks for. ``batch_snapshot`` asks for
        the snapshot many names to a message (gRPC's cost is per message: a
        100,000-name restart is seconds faster); single events, as a broker
        older than the option sends them, are applied all the same.
        """
        self.certificates = certificates if certificates is not None else CertificateMap()
        self._channel = channel
        self._stub: Any = broker_pb2_grpc.CertificateBrokerServiceStub(channel)  # type: ignore[no-untyped-call]
        self._apps = list(apps)
        self._domains = list(domains)
        self._on_change = on_change
        self._idle_timeout = idle_timeout
        self._max_backoff = max_backoff
        self._batch_snapshot = batch_snapshot
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
        self._router_id = router_id
        self._reporter = BrokerClient(channel, timeout=10.0)
        self._report_interval = report_interval
        self._report_debounce = report_debounce
        self._report_wanted = asyncio.Event()
        self.reports = 0
        self.report_failures = 0
        self.last_report_error: BrokerError | None = None
        self.broker_revision = 0

    @classmethod
    def connect(cls, addr: str, tls: TlsFiles | None, **kwargs: Any) -> RouterWatcher:
        """A watcher on its own channel to ``addr``; mTLS with ``tls`` (plaintext gets no keys).

        Reconnect backoff is capped at 3 s (gRPC's default grows to 120 s, which
        would leave a router on stale certificates long after the broker came
        back) and keepalive pings detect a dead connection. ``close()`` it after.
        """
        options: list[tuple[str, Any]] = [
            ("grpc.initial_reconnect_backoff_ms", 200),
            # Not grpc.min_reconnect_backoff_ms: that is one connection attempt's
            # deadline (see BrokerClient.connect); 200 ms fails slow TLS handshakes.
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
        self._report_wanted.set()
        if self._on_change is None:
            return
        try:
            self._on_change(change)
        except Exception:  # a callback bug must not stop certificate updates
            log.exception("on_change callback failed")

    async def run(self) -> None:
        """Follow the broker forever (until cancelled), resuming after every break."""
        reporting = None
        if self._router_id is not None:
            reporting = asyncio.create_task(self._report_loop(), name="router-report")
        try:
            await self._follow()
        finally:
            if reporting is not None:
                reporting.cancel()
                await asyncio.gather(reporting, return_exceptions=True)

    async def report(self) -> bool:
        """Report what is served now (needs ``router_id``); False if the broker did not take it."""
        if self._router_id is None:
            raise ValueError("this watcher has no router_id")
        self._report_wanted.clear()
        try:
            self.broker_revision = await self._reporter.report_serving(
                self._router_id, self._revision, len(self.certificates)
            )
        except BrokerError as error:
            self.report_failures += 1
            previous, self.last_report_error = self.last_report_error, error
            if previous is None or (previous.code, previous.reason) != (error.code, error.reason):
                log.warning("report to the broker failed (%s); still serving, will retry", error)
            return False
        if self.last_report_error is not None:
            log.info("reports to the broker work again")
            self.last_report_error = None
        self.reports += 1
        return True

    def _report_every(self) -> float:
        if self._report_interval is not None:
            return self._report_interval
        return self._reporter.report_interval.total_seconds()

    async def _report_loop(self) -> None:
        while True:
            await self.report()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._report_every()):
                    await self._report_wanted.wait()
                    await asyncio.sleep(self._report_debounce)  # let a burst of changes land

    async def _follow(self) -> None:
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
            after_revision=after,
            include_keys=True,
            apps=self._apps,
            domains=self._domains,
            batch_snapshot=self._batch_snapshot,
        )
        call = self._stub.WatchStatus(request)
        # A snapshot builds a separate map; entries become visible only at
        # SNAPSHOT_COMPLETE. Dropped (with this function's frame) if the
        # stream breaks first, so a half snapshot never leaks into serving.
        pending: dict[str, Served] | None = {} if after == 0 else None
        progressed = False
        try:
            while True:
                try:  # asyncio.timeout, not wait_for: no task per message in a big snapshot
                    async with asyncio.timeout(self._idle_timeout):
                        response = await call.read()
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
                elif kind == "snapshot_batch":
                    for event in response.snapshot_batch.events:
                        pending = await self._apply(event, pending)
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
                entry = self._entry(name, event)  # no context: cheap enough for the loop
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
                entry = self._entry(name, event)
                if entry is not None and self.certificates.is_warm(name):
                    # A name in use: build the new context now, off the loop, so its
                    # next handshake does not pay for it (and bad material is caught).
                    context = await self._prepare(entry)
                    if context is not None:
                        self.certificates.put(entry, context=context)
                        self._changed(MapChange(event.revision, updated=(name,)))
                elif entry is not None:
                    self.certificates.put(entry)
                    self._changed(MapChange(event.revision, updated=(name,)))
            elif self.certificates.remove(name):
                self._changed(MapChange(event.revision, removed=(name,)))
        elif event.type == broker_pb2.EVENT_TYPE_DOMAIN_REMOVED and self.certificates.remove(name):
            self._changed(MapChange(event.revision, removed=(name,)))
        await self._set_revision(event.revision)
        return None

    def _entry(self, name: str, event: broker_pb2.WatchEvent) -> Served | None:
        """The checked entry (no context); None, logged and counted, if the material is bad."""
        try:
            return self.certificates.build(name, event.serving, event.revision)
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            self._bad(name, event.revision, error)
            return None

    async def _prepare(self, entry: Served) -> ssl.SSLContext | None:
        try:
            return await asyncio.to_thread(self.certificates.build_context, entry)
        except (ValueError, ssl.SSLError, OSError) as error:
            self._bad(entry.name, entry.revision, error)
            return None

    def _bad(self, name: str, revision: int, error: Exception) -> None:
        self.bad_material += 1
        log.error("cannot load the certificate of %s at revision %d: %s", name, revision, error)
