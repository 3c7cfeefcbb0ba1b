"""Composition root: settings → store → hub → broker → scheduler → grpc.aio server.

``run(settings, clock)`` starts everything and returns a handle the tests use
in-process; ``main()`` is ``certbroker serve``: it waits for SIGTERM/SIGINT and
stops gracefully (in-flight RPCs get a grace period, the scheduler finishes its
current writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from certbroker import bounds, logs, names
from certbroker.acme.dns01 import Dns01Publisher, Dns01Updater, TsigKey
from certbroker.acme.http01 import Http01Responder, ResponderLimits
from certbroker.acme.http01_probe import Http01Probe, Publisher
from certbroker.acme.issuer import AcmeIssuer
from certbroker.acme.shared_challenges import SharedChallenges
from certbroker.api import reflection
from certbroker.api.auth import Authorizer
from certbroker.api.fairness import Fairness, PeerLimits
from certbroker.api.malformed import MalformedRequests
from certbroker.api.servicer import BrokerServicer
from certbroker.app import Broker
from certbroker.claims import Claims
from certbroker.clock import Clock, SystemClock
from certbroker.config import ConfigError, Settings, broker_id, unknown_variables
from certbroker.delegation import LabelKey
from certbroker.dns import DnsChecker, PlatformTargets
from certbroker.doctor import Doctor, DoctorPolicy
from certbroker.events import EventHub
from certbroker.housekeeping import ChallengeEvents, Compactor
from certbroker.instrumented import InstrumentedDns
from certbroker.journal import Journal
from certbroker.metrics import Metrics, MetricsEndpoint
from certbroker.platform import Platform, PlatformConflict, reconcile
from certbroker.rlimits import raise_open_files_limit
from certbroker.routers import RouterRegistry
from certbroker.scheduler import Policy, Scheduler
from certbroker.startup import StartupError, bind, describe
from certbroker.store import factory
from certbroker.store.acme_account import StoredAccount
from certbroker.store.base import Store
from certbroker.store.delegation_secret import load_label_key
from certbroker.store.lock import DatabaseBusy, DatabaseLock
from certbroker.telemetry import server_interceptor, tracer_provider
from certbroker.v1 import broker_pb2
from certbroker.x509.files import PemFileError, check_server_tls
from certbroker.x509.sealing import KekError, KeySealer
from certbroker.x509.validate import CustomCertificateValidator, TrustStoreError

if TYPE_CHECKING:  # imported where used: a SQLite broker never loads asyncpg
    from certbroker.store.serving import ServingMark

log = logging.getLogger("certbroker")
SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["CertificateBrokerService"].full_name
_CANARY_KEY = "kek_canary"
_CANARY_AAD = "certbroker:kek-canary"
_CANARY_TEXT = b"certbroker key-encryption key canary"
_ROTATION_KEY = "kek_rotation"  # see ops/rotate.py
GRACE_SECONDS = 5.0
# Several brokers on one store: how often a scheduler looks for what others added.
CLAIM_POLL = timedelta(seconds=1)


class Stopped(Exception):
    """The running broker stopped itself: serving on would be unsafe (the message says why)."""


class _Closing:
    """Gives the issuer the ``stop()`` the shutdown sequence calls."""

    def __init__(self, issuer: AcmeIssuer) -> None:
        self._issuer = issuer

    async def stop(self) -> None:
        await self._issuer.close()


@dataclass
class Running:
    """A started broker; ``stop()`` undoes ``run()`` in reverse order."""

    settings: Settings
    port: int
    store: Store
    hub: EventHub
    broker: Broker
    server: grpc.aio.Server
    health: Any
    scheduler: Scheduler
    responder: Http01Responder
    servicer: BrokerServicer
    extras: list[Any] = field(default_factory=list)
    tracing: TracerProvider | None = None
    health_server: grpc.aio.Server | None = None  # plaintext, grpc.health.v1 only
    health_port: int | None = None
    db_lock: DatabaseLock | None = None
    metrics: Metrics = field(default_factory=Metrics)
    metrics_port: int | None = None  # the Prometheus scrape endpoint, when on
    #: PostgreSQL: the serving lock (``store/serving.py``); its ``failed`` stops the broker
    serving_mark: ServingMark | None = None

    async def stop(self, grace: float = GRACE_SECONDS) -> None:
        self.servicer.stopping = True
        self.hub.close_streams()  # watchers hear UNAVAILABLE now and resume elsewhere
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:  # after the grace: probes saw NOT_SERVING
            await self.health_server.stop(0)
        await self.scheduler.stop()
        for extra in reversed(self.extras):
            await extra.stop()
        await self.hub.stop()
        await self.store.close()
        if self.db_lock is not None:
            self.db_lock.release()
        if self.tracing is not None:
            self.tracing.shutdown()  # flushes the spans still queued
        if self.metrics.provider is not None:
            self.metrics.provider.shutdown()


async def _open_sealer(settings: Settings, store: Store) -> KeySealer:
    """Load the KEK; on a brand-new store with no KEK file, create one.

    A store that already holds sealed data never gets a fresh KEK: that would
    make every stored key unreadable, so a missing or wrong KEK stops the start.
    """
    rotation = await store.get_meta(_ROTATION_KEY)
    if rotation is not None:
        raise StartupError(
            f"CERTBROKER_KEK_FILE={settings.kek_file}: a key-encryption key rotation is "
            f"unfinished ({rotation.decode(errors='replace')}); finish it first: "
            "certbroker rotate-kek --kek OLD_FILE --new-kek NEW_FILE"
        )
    canary = await store.get_meta(_CANARY_KEY)
    if canary is None and not await asyncio.to_thread(os.path.exists, settings.kek_file):
        # a new folder for secrets: only the broker's user may list or add files in it
        os.makedirs(os.path.dirname(os.path.abspath(settings.kek_file)), 0o700, exist_ok=True)
        KeySealer.generate_file(settings.kek_file)
        log.warning("created a new key-encryption key at %s; back it up", settings.kek_file)
    try:
        sealer = KeySealer.load(settings.kek_file)
    except KekError as error:
        raise StartupError(f"CERTBROKER_KEK_FILE: {error}") from None
    if canary is None:
        # ensure, not set: brokers starting together on a new shared database keep the
        # first one's canary, and one started with another KEK is refused just below
        async with store.transaction() as tx:
            canary = await tx.ensure_meta(_CANARY_KEY, sealer.seal(_CANARY_TEXT, _CANARY_AAD))
    try:
        sealer.open(canary, _CANARY_AAD)
    except KekError:
        sealed_by = KeySealer.blob_key_id(canary) or "unknown"
        raise StartupError(
            f"CERTBROKER_KEK_FILE={settings.kek_file}: this is not the key-encryption key "
            f"the database was sealed with (this one's id is {sealer.key_id}, the "
            f"database's {sealed_by}); restore the original key file"
        ) from None
    return sealer


async def _serving_mark(settings: Settings, store: Store, owner: str) -> ServingMark:
    """Hold the PostgreSQL serving lock (``store/serving.py``): no KEK rotation beside us.

    Should the holding connection drop and a rotation run in the gap, the broker
    notices when it holds the lock again: the canary no longer opens with its KEK.
    (Imported here, as the store factory does: a SQLite broker never loads asyncpg.)
    """
    import asyncpg

    from certbroker.store.serving import RotationRunning, ServingMark

    async def still_our_kek() -> None:
        canary = await store.get_meta(_CANARY_KEY)
        try:
            if canary is not None:
                KeySealer.load(settings.kek_file).open(canary, _CANARY_AAD)
        except KekError:
            raise StartupError(
                f"CERTBROKER_KEK_FILE={settings.kek_file}: the database was re-sealed under "
                f"KEK id {KeySealer.blob_key_id(canary or b'') or 'unknown'} while this broker's "
                "connection was down; it cannot open new keys: restart it with the new KEK file"
            ) from None

    try:
        return await ServingMark.take(settings.db, owner, still_our_kek)
    except RotationRunning:
        raise StartupError(
            f"CERTBROKER_DB={factory.parse(settings.db).describe()}: a KEK rotation "
            "(certbroker rotate-kek) is running on this database; start the broker when it "
            "has finished, with the KEK file it names"
        ) from None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise StartupError(
            f"CERTBROKER_DB={factory.parse(settings.db).describe()}: cannot hold the serving "
            f"lock: {detail}"
        ) from None


def _server_credentials(settings: Settings) -> grpc.ServerCredentials:
    assert settings.tls_cert and settings.tls_key and settings.tls_client_ca
    try:  # gRPC would only say "Failed to bind" about a bad file
        check_server_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    except PemFileError as error:
        raise StartupError(str(error)) from None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
        root_certificates=Path(settings.tls_client_ca).read_bytes(),
        require_client_auth=True,
    )


async def run(
    settings: Settings,
    clock: Clock | None = None,
    span_exporter: SpanExporter | None = None,
    *,
    open_store: Callable[[str], Awaitable[Store]] = factory.open_store,
) -> Running:
    """Start the broker; a failure undoes what was started (no thread, port or lock is left)."""
    started = contextlib.AsyncExitStack()
    try:
        running = await _start(settings, clock or SystemClock(), span_exporter, started, open_store)
    except BaseException:
        await started.aclose()
        raise
    started.pop_all()
    return running


async def _start(
    settings: Settings,
    clock: Clock,
    span_exporter: SpanExporter | None,
    started: contextlib.AsyncExitStack,
    open_store: Callable[[str], Awaitable[Store]],
) -> Running:
    open_files = raise_open_files_limit()
    await asyncio.to_thread(names.preload)
    # Files first: nothing is created or bound when one of them is wrong.
    try:
        validator = CustomCertificateValidator.from_file(settings.trust_bundle)
    except TrustStoreError as error:
        raise StartupError(f"CERTBROKER_TRUST_BUNDLE={settings.trust_bundle}: {error}") from None
    credentials = _server_credentials(settings) if settings.tls_enabled else None
    provider = tracer_provider(settings.traces_exporter, span_exporter)
    if provider is not None:
        started.callback(provider.shutdown)
    tracer = provider.get_tracer("certbroker") if provider else trace.NoOpTracer()
    metrics, registry = Metrics.prometheus(clock) if settings.metrics_listen else (Metrics(), None)
    db_lock, store = await _open_store(settings, open_store)
    if db_lock is not None:
        started.callback(db_lock.release)
    started.push_async_callback(store.close)
    store.observe(Journal(metrics), tracer if provider else None)  # before any domain write
    if metrics.enabled:
        t0 = time.perf_counter()
        indexed = await metrics.fleet.load(store)
        log.info("metrics: %d domains indexed in %.1f s", indexed, time.perf_counter() - t0)
    # Several brokers on one (PostgreSQL) store: leases, shared answers and jobs need a
    # name for this one; one broker on its SQLite file shares nothing with anyone.
    shared = factory.parse(settings.db).backend == "postgresql"
    owner = broker_id(settings)
    extras: list[Any] = []  # stopped in reverse order: the serving mark last
    mark: ServingMark | None = None
    if shared:
        # before the KEK check: from here on no KEK rotation runs until this broker stops
        mark = await _serving_mark(settings, store, owner)
        started.push_async_callback(mark.stop)
        extras.append(mark)
    sealer = await _open_sealer(settings, store)
    try:
        labels = await load_label_key(store, sealer)
    except KekError as error:
        raise StartupError(f"CERTBROKER_KEK_FILE={settings.kek_file}: {error}") from None
    platform = Platform.from_names(settings.platform_domains, settings.platform_zone)
    await _reconcile_platform(store, clock, platform)
    hub = EventHub(store)
    await hub.start()
    started.push_async_callback(hub.stop)
    challenge_events = ChallengeEvents(
        store, clock, owner=owner if shared else None, lease=settings.lease
    )
    responder = Http01Responder(
        on_change=challenge_events.on_change, limits=_responder_limits(settings, open_files)
    )
    publisher: Http01Responder | SharedChallenges = responder
    if shared:
        publisher = SharedChallenges(store, clock, responder, owner)
        responder.lookup = publisher.lookup
    if settings.http01_listen is not None:
        await _start_responder(responder, *settings.http01_listen)
        started.push_async_callback(responder.stop)
        extras.append(responder)
    dns01 = _dns01_publisher(settings, platform)
    health_servicer = health.aio.HealthServicer()

    async def store_health(healthy: bool) -> None:
        """The scheduler's verdict on the store; a broker that cannot record is NOT_SERVING."""
        serving = health_pb2.HealthCheckResponse
        status = serving.SERVING if healthy else serving.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await health_servicer.set(service, status)

    issuer: AcmeIssuer | None = None
    if settings.acme_directory:
        issuer = AcmeIssuer(
            settings.acme_directory,
            ca_bundle=settings.acme_ca_bundle,
            email=settings.acme_email,
            account_store=StoredAccount(store, sealer, settings.acme_directory),
            responder=publisher,
            dns01=dns01,
            max_workers=settings.acme_workers,
            tracer=tracer,
        )
        started.push_async_callback(issuer.close)
        extras.append(_Closing(issuer))
    dns = DnsChecker(list(settings.dns_servers) if settings.dns_servers else None)
    targets = (
        PlatformTargets.parse(settings.platform_targets) if settings.platform_targets else None
    )
    scheduler = Scheduler(
        store,
        clock,
        sealer,
        issuer,
        InstrumentedDns(dns, tracer, metrics),  # the doctor's own checks are not counted
        targets,
        Policy(
            dns_check_interval=settings.dns_check_interval,
            caa_identity=settings.caa_identity,
            limits=settings.limits,
            max_concurrent=settings.max_concurrent_orders,
            claim_poll=CLAIM_POLL if shared else None,
        ),
        dns01=dns01,
        labels=labels,
        on_store_health=store_health,
        metrics=metrics,
        tracer=tracer,
        claims=Claims(store, clock, owner, settings.lease),
    )
    metrics.scheduler(lambda: scheduler.busy)
    metrics.ca_health(lambda: scheduler.ca.available, lambda: scheduler.ca.paused(clock.now()))
    metrics.quota_limits(
        settings.quota_per_registered_domain.capacity, settings.quota_per_name_set.capacity
    )
    broker = Broker(
        store,
        clock,
        sealer,
        validator,
        labels,
        wake_scheduler=scheduler.wake,
        forced_retry_interval=settings.forced_retry_interval,
        dns01_configured=dns01 is not None and dns01.delegates,  # apps' DNS-01 needs the zone
        platform=platform,
    )
    authorizer = Authorizer(settings.tls_enabled, settings.roles)
    fairness = PeerLimits(settings.max_inflight_per_peer, settings.bad_requests_per_peer)
    server = grpc.aio.server(
        interceptors=[
            # First, so a peer over its limits is refused before its request is parsed.
            Fairness(fairness, authorizer.peer, metrics.rpc_finished),
            # Garbage that does not parse is refused INVALID_ARGUMENT, not logged as a traceback.
            MalformedRequests(),
            *([server_interceptor(provider)] if provider else []),
        ],
        options=[
            ("grpc.so_reuseport", 0),  # a port in use is an error, never silently shared
            # gRPC cancels stream opens beyond these (defaults 1,000 / 3,000): a broker
            # restart makes every router reconnect at once.
            ("grpc.server.max_pending_requests", settings.max_pending_requests),
            ("grpc.server.max_pending_requests_hard_limit", settings.max_pending_requests),
            ("grpc.server_max_unrequested_time_in_server", 120),
            ("grpc.max_concurrent_streams", 100_000),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            *bounds.server_options(),  # larger requests: RESOURCE_EXHAUSTED from gRPC itself
        ],
    )
    servicer = BrokerServicer(
        broker,
        hub,
        clock,
        authorizer,
        heartbeat=settings.heartbeat_interval,
        max_lag=settings.watch_buffer,
        send_timeout=settings.watch_send_timeout,
        tracer=provider.get_tracer("certbroker") if provider else None,
        challenges=challenge_events,
        routers=RouterRegistry(
            clock,
            settings.router_report_interval,
            settings.max_routers,
            id_is_identity=settings.router_id_is_identity,
            per_identity=settings.max_routers_per_identity,
        ),
        doctor=_doctor(settings, store, clock, dns, targets, publisher, dns01, labels, platform),
        metrics=metrics,
    )
    from certbroker.v1 import broker_pb2_grpc

    broker_pb2_grpc.add_CertificateBrokerServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(server, [SERVICE_NAME, health.SERVICE_NAME])
    running = Running(
        settings,
        0,  # the port, known once bound (below)
        store,
        hub,
        broker,
        server,
        health_servicer,
        scheduler,
        responder,
        servicer,
        extras,
        provider,
        db_lock=db_lock,
        metrics=metrics,
        serving_mark=mark,
    )
    started.pop_all()  # from here running.stop() undoes everything, in its order
    started.push_async_callback(running.stop, 0)
    if credentials is not None:
        add_port = functools.partial(server.add_secure_port, settings.listen, credentials)
    else:
        add_port = functools.partial(server.add_insecure_port, settings.listen)
    running.port = bind("CERTBROKER_LISTEN", settings.listen, add_port)
    running.health_server, running.health_port = _health_server(settings, health_servicer)
    if registry is not None and settings.metrics_listen is not None:
        running.metrics_port = _metrics_endpoint(settings.metrics_listen, registry, extras)
    await server.start()
    if running.health_server is not None:
        await running.health_server.start()
    await scheduler.start()
    compactor = Compactor(
        store,
        clock,
        settings.event_retention,
        settings.compaction_interval,
        settings.key_retention,
        owner=owner if shared else None,
    )
    await compactor.start()
    extras.extend([compactor, challenge_events])
    await store_health(scheduler.store_healthy)
    http01_port = responder.port if settings.http01_listen is not None else None
    log.info(
        "%s",
        describe(
            settings,
            port=running.port,
            health_port=running.health_port,
            http01_port=http01_port,
            kek_id=sealer.key_id,
            broker_id=owner if shared else None,
        ),
    )
    return running


def _doctor(
    settings: Settings,
    store: Store,
    clock: Clock,
    dns: DnsChecker,
    targets: PlatformTargets | None,
    publisher: Publisher,
    dns01: Dns01Publisher | None,
    labels: LabelKey,
    platform: Platform,
) -> Doctor:
    """CheckDomain's doctor: the scheduler's DNS, targets and DNS-01 access, read-only."""
    timeout = settings.doctor_timeout.total_seconds()
    return Doctor(
        store,
        clock,
        dns,
        targets,
        DoctorPolicy(
            acme_directory=settings.acme_directory,
            caa_identity=settings.caa_identity,
            limits=settings.limits,
            timeout=settings.doctor_timeout,
            interval=settings.doctor_interval,
        ),
        probe=Http01Probe(
            publisher,
            dns.addresses,
            port=settings.doctor_http_port,
            timeout=min(5.0, timeout),
            # Public addresses, and the platform's own (private in many set-ups): never a
            # request into the broker's network on a customer's say-so.
            reachable=lambda ip: ip.is_global or (targets is not None and ip in targets.addresses),
        ),
        dns01=dns01,
        labels=labels,
        platform=platform,
    )


def _dns01_publisher(settings: Settings, platform: Platform) -> Dns01Publisher | None:
    """DNS-01 writers: the delegation zone's (if set) and one per platform zone, one server/key."""
    if not (settings.dns01_server and settings.dns01_tsig_key):
        return None
    key = TsigKey.load(settings.dns01_tsig_key)
    delegation = None
    if settings.dns01_zone:
        delegation = Dns01Updater(settings.dns01_zone, settings.dns01_server, key)
    zones: dict[str, Dns01Updater] = {}
    for domain in platform:
        if domain.zone not in zones:
            zones[domain.zone] = Dns01Updater(domain.zone, settings.dns01_server, key)
    if delegation is None and not zones:
        return None
    return Dns01Publisher(delegation, {d.challenge_name: zones[d.zone] for d in platform})


async def _reconcile_platform(store: Store, clock: Clock, platform: Platform) -> None:
    """Store the platform domains as configured before anything serves (``platform``)."""
    try:
        done = await reconcile(store, clock, platform)
    except PlatformConflict as error:
        raise StartupError(str(error)) from None
    if done.added:
        log.info("platform domains added: %s", ", ".join(done.added))
    if done.resumed:
        log.info("platform domains configured again (renewed again): %s", ", ".join(done.resumed))
    if done.retired:
        log.warning(
            "platform domains no longer in CERTBROKER_PLATFORM_DOMAINS, retired (not renewed, "
            "serving until they expire; the admin role may remove them): %s",
            ", ".join(done.retired),
        )


def _responder_limits(settings: Settings, open_files: int) -> ResponderLimits:
    """The HTTP-01 caps; the total within a quarter of the open-file limit (gRPC needs the rest)."""
    total = min(settings.http01_max_connections, max(16, open_files // 4))
    if total < settings.http01_max_connections:
        log.warning(
            "HTTP-01 connection cap lowered to %d: the open-file limit is only %d",
            total,
            open_files,
        )
    return ResponderLimits(
        max_connections=total,
        max_per_peer=settings.http01_max_connections_per_peer,
        header_timeout=settings.http01_header_timeout.total_seconds(),
        idle_timeout=settings.http01_idle_timeout.total_seconds(),
    )


def _health_server(settings: Settings, servicer: Any) -> tuple[grpc.aio.Server | None, int | None]:
    """A second, plaintext server with only grpc.health.v1, sharing the main one's servicer.

    Container and orchestrator probes run inside the host and speak plaintext;
    this gives them SERVING/NOT_SERVING (in step with the main server, since the
    servicer is shared) without opening the management API without TLS.
    ``so_reuseport`` off: a port already in use is an error, not a shared port.
    """
    if settings.health_listen is None:
        return None, None
    host, port = settings.health_listen
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    health_server = grpc.aio.server(
        # Any local process can reach it: garbage is refused like on the main port, not
        # logged as a traceback per request.
        interceptors=[MalformedRequests()],
        options=[("grpc.so_reuseport", 0), *bounds.server_options()],
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, health_server)
    add_port = functools.partial(health_server.add_insecure_port, address)
    return health_server, bind("CERTBROKER_HEALTH_LISTEN", address, add_port)


async def _open_store(
    settings: Settings, open_store: Callable[[str], Awaitable[Store]]
) -> tuple[DatabaseLock | None, Store]:
    """Lock the database (one broker per SQLite file), then open it; errors name CERTBROKER_DB.

    PostgreSQL takes no lock file: several brokers may share the database (the store
    serialises their writes), and its errors already name the variable, password hidden.
    """
    location = factory.parse(settings.db)
    if location.backend == "postgresql":
        try:
            return None, await open_store(settings.db)
        except factory.StoreOpenError as error:
            raise StartupError(str(error)) from None
    path = location.target
    where = f"CERTBROKER_DB={settings.db}"
    if os.path.isdir(path):
        raise StartupError(f"{where}: is a directory; give the database file's path")
    try:
        lock = DatabaseLock.acquire(path, "certbroker serve")
    except DatabaseBusy as error:
        raise StartupError(f"{where}: {error}; one broker per database") from None
    except FileExistsError as error:  # from makedirs: a file where a folder should be
        raise StartupError(f"{where}: {error.filename} is not a directory") from None
    except OSError as error:
        raise StartupError(f"{where}: cannot create {_os_reason(error)}") from None
    try:
        return lock, await open_store(path)
    except (OSError, sqlite3.Error) as error:
        if lock is not None:
            lock.release()
        reason = _os_reason(error) if isinstance(error, OSError) else str(error)
        raise StartupError(f"{where}: cannot open the database: {reason}") from None


async def _start_responder(responder: Http01Responder, host: str, port: int) -> None:
    try:
        await responder.start(host, port)
    except OSError as error:
        cause = os.strerror(error.errno).lower() if error.errno else str(error)
        raise StartupError(
            f"CERTBROKER_HTTP01_LISTEN={host}:{port}: cannot listen: {cause}; "
            "choose another address or set it to off"
        ) from None


def _metrics_endpoint(
    listen: tuple[str, int], registry: CollectorRegistry, extras: list[Any]
) -> int:
    """Start the Prometheus scrape endpoint (stopped with the other extras); its port."""
    host, port = listen
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    endpoint = MetricsEndpoint(registry)
    try:
        bound = endpoint.start(host, port)
    except OSError as error:
        cause = os.strerror(error.errno).lower() if error.errno else str(error)
        raise StartupError(
            f"CERTBROKER_METRICS_LISTEN={address}: cannot listen: {cause}; "
            "choose another address or set it to off"
        ) from None
    extras.append(endpoint)
    log.info("metrics for Prometheus on http://%s/metrics", f"{address.rsplit(':', 1)[0]}:{bound}")
    return bound


def _os_reason(error: OSError) -> str:
    """``/proc/nope: No such file or directory`` rather than ``[Errno 2] ...``."""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


async def _serve(settings: Settings) -> None:
    # Installed first: a SIGTERM during the start stops the broker cleanly right after it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        running = await run(settings)
    except (StartupError, asyncio.CancelledError):
        raise
    except Exception as error:  # unforeseen: still one line (the traceback at DEBUG)
        log.debug("start failed", exc_info=True)
        raise StartupError(f"{type(error).__name__}: {' '.join(str(error).split())}") from None
    # Everything loaded so far lives as long as the process: keep it out of the cyclic
    # collector, whose full passes over it showed as pauses in watch fan-out.
    gc.collect()
    gc.freeze()
    mark = running.serving_mark
    waits = [asyncio.ensure_future(stop.wait())]
    if mark is not None:
        waits.append(asyncio.ensure_future(mark.failed.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    log.info("stopping")
    await running.stop()
    if mark is not None and mark.failed.is_set():
        raise Stopped(mark.failure)


def main() -> int:
    before = set(threading.enumerate())
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"certbroker: configuration error: {error}", file=sys.stderr)
        return 2
    logs.configure(settings)
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    try:
        asyncio.run(_serve(settings))
    except StartupError as error:
        print(f"certbroker: cannot start: {error}", file=sys.stderr, flush=True)
        _exit_if_threads_linger(1, before)
        return 1
    except Stopped as error:
        print(f"certbroker: stopped: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


def _exit_if_threads_linger(code: int, before: set[threading.Thread]) -> None:
    """A failed start must end the process: a hung one looks healthy to systemd or Docker.

    ``run()`` undoes what it started, so this is a safety net for a thread the
    start left behind (the interpreter would wait for it forever at exit). Only
    threads started since ``main()`` began count, and each gets a moment to end.
    """
    deadline = time.monotonic() + 2.0
    lingering = [t for t in threading.enumerate() if t not in before and not t.daemon]
    for thread in lingering:
        thread.join(max(0.0, deadline - time.monotonic()))
    if names := [t.name for t in lingering if t.is_alive()]:
        log.debug("threads still running after a failed start: %s", ", ".join(names))
        logging.shutdown()
        os._exit(code)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    os._exit(130)
