"""Composition root: settings → store → hub → broker → scheduler → grpc.aio server.

``run(settings, clock)`` starts everything and returns a handle the tests use
in-process; ``main()`` is ``certbroker serve``: it waits for SIGTERM/SIGINT and
stops gracefully (in-flight RPCs get a grace period, the scheduler finishes its
current writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from certbroker import bounds, names
from certbroker.acme.dns01 import Dns01Updater, TsigKey
from certbroker.acme.http01 import Http01Responder, ResponderLimits
from certbroker.acme.issuer import AcmeIssuer
from certbroker.api.auth import Authorizer
from certbroker.api.malformed import MalformedRequests
from certbroker.api.servicer import BrokerServicer
from certbroker.app import Broker
from certbroker.clock import Clock, SystemClock
from certbroker.config import ConfigError, Settings
from certbroker.dns import DnsChecker, PlatformTargets
from certbroker.events import EventHub
from certbroker.housekeeping import ChallengeEvents, Compactor
from certbroker.rlimits import raise_open_files_limit
from certbroker.routers import RouterRegistry
from certbroker.scheduler import Policy, Scheduler
from certbroker.store.acme_account import StoredAccount
from certbroker.store.delegation_secret import load_label_key
from certbroker.store.sqlite import SqliteStore
from certbroker.telemetry import server_interceptor, tracer_provider
from certbroker.v1 import broker_pb2
from certbroker.x509.sealing import KekError, KeySealer
from certbroker.x509.validate import CustomCertificateValidator

log = logging.getLogger("certbroker")
SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["CertificateBrokerService"].full_name
_CANARY_KEY = "kek_canary"
_CANARY_AAD = "certbroker:kek-canary"
_CANARY_TEXT = b"certbroker key-encryption key canary"
GRACE_SECONDS = 5.0


class _Closing:
    """Gives the issuer the ``stop()`` the shutdown sequence calls."""

    def __init__(self, issuer: AcmeIssuer) -> None:
        self._issuer = issuer

    async def stop(self) -> None:
        await self._issuer.close()


class StartupError(Exception):
    """The broker cannot start; the message says what to fix."""


@dataclass
class Running:
    """A started broker; ``stop()`` undoes ``run()`` in reverse order."""

    settings: Settings
    port: int
    store: SqliteStore
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
        if self.tracing is not None:
            self.tracing.shutdown()  # flushes the spans still queued


async def _open_sealer(settings: Settings, store: SqliteStore) -> KeySealer:
    """Load the KEK; on a brand-new store with no KEK file, create one.

    A store that already holds sealed data never gets a fresh KEK: that would
    make every stored key unreadable, so a missing or wrong KEK stops the start.
    """
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
        async with store.transaction() as tx:
            await tx.set_meta(_CANARY_KEY, sealer.seal(_CANARY_TEXT, _CANARY_AAD))
    else:
        try:
            sealer.open(canary, _CANARY_AAD)
        except KekError:
            raise StartupError(
                f"CERTBROKER_KEK_FILE={settings.kek_file}: this is not the key-encryption key "
                "the database was sealed with; restore the original key file"
            ) from None
    return sealer


def _server_credentials(settings: Settings) -> grpc.ServerCredentials:
    assert settings.tls_cert and settings.tls_key and settings.tls_client_ca
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
    open_store: Callable[[str], Awaitable[SqliteStore]] = SqliteStore.open,
) -> Running:
    clock = clock or SystemClock()
    open_files = raise_open_files_limit()
    await asyncio.to_thread(names.preload)
    store = await open_store(settings.db)
    try:
        sealer = await _open_sealer(settings, store)
        labels = await load_label_key(store, sealer)
        validator = CustomCertificateValidator.from_file(settings.trust_bundle)
    except BaseException:
        await store.close()
        raise
    hub = EventHub(store)
    await hub.start()
    extras: list[Any] = []
    challenge_events = ChallengeEvents(store, clock)
    responder = Http01Responder(
        on_change=challenge_events.on_change, limits=_responder_limits(settings, open_files)
    )
    if settings.http01_listen is not None:
        host, http01_port = settings.http01_listen
        await responder.start(host, http01_port)
        extras.append(responder)
    dns01: Dns01Updater | None = None
    if settings.dns01_zone and settings.dns01_server and settings.dns01_tsig_key:
        key = TsigKey.load(settings.dns01_tsig_key)
        dns01 = Dns01Updater(settings.dns01_zone, settings.dns01_server, key)
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
            responder=responder,
            dns01=dns01,
            max_workers=settings.acme_workers,
        )
        extras.append(_Closing(issuer))
    scheduler = Scheduler(
        store,
        clock,
        sealer,
        issuer,
        DnsChecker(list(settings.dns_servers) if settings.dns_servers else None),
        PlatformTargets.parse(settings.platform_targets) if settings.platform_targets else None,
        Policy(
            dns_check_interval=settings.dns_check_interval,
            caa_identity=settings.caa_identity,
            quota_per_registered_domain=settings.quota_per_registered_domain,
            quota_per_name_set=settings.quota_per_name_set,
            max_concurrent=settings.max_concurrent_orders,
        ),
        dns01=dns01,
        labels=labels,
        on_store_health=store_health,
    )
    broker = Broker(
        store,
        clock,
        sealer,
        validator,
        labels,
        wake_scheduler=scheduler.wake,
        forced_retry_interval=settings.forced_retry_interval,
    )
    provider = tracer_provider(settings.traces_exporter, span_exporter)
    server = grpc.aio.server(
        # Garbage that does not parse is refused INVALID_ARGUMENT, not logged as a traceback.
        interceptors=[MalformedRequests(), *([server_interceptor(provider)] if provider else [])],
        options=[
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
        Authorizer(settings.tls_enabled, settings.roles),
        heartbeat=settings.heartbeat_interval,
        max_lag=settings.watch_buffer,
        send_timeout=settings.watch_send_timeout,
        tracer=provider.get_tracer("certbroker") if provider else None,
        challenges=challenge_events,
        routers=RouterRegistry(clock, settings.router_report_interval, settings.max_routers),
    )
    from certbroker.v1 import broker_pb2_grpc

    broker_pb2_grpc.add_CertificateBrokerServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    if settings.tls_enabled:
        port = server.add_secure_port(settings.listen, _server_credentials(settings))
    else:
        port = server.add_insecure_port(settings.listen)
    running = Running(
        settings,
        port,
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
    )
    try:
        running.health_server, running.health_port = _health_server(settings, health_servicer)
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
        )
        await compactor.start()
        extras.extend([compactor, challenge_events])
        await store_health(scheduler.store_healthy)
    except BaseException:
        await running.stop(0)
        raise
    log.info(
        "certbroker listening on %s (port %d, %s)",
        settings.listen,
        port,
        "mTLS" if settings.tls_enabled else "plaintext",
    )
    if running.health_server is not None:
        log.info("health checks (plaintext, grpc.health.v1 only) on port %d", running.health_port)
    return running


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
    health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *bounds.server_options()])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, health_server)
    try:
        return health_server, health_server.add_insecure_port(address)
    except RuntimeError:
        raise StartupError(
            f"CERTBROKER_HEALTH_LISTEN={address}: cannot listen there (address in use?); "
            "choose another address or set it to off"
        ) from None


async def _serve(settings: Settings) -> None:
    running = await run(settings)
    # Everything loaded so far lives as long as the process: keep it out of the cyclic
    # collector, whose full passes over it showed as pauses in watch fan-out.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await running.stop()


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"certbroker: configuration error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(_serve(settings))
    except StartupError as error:
        print(f"certbroker: cannot start: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"certbroker: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    os._exit(130)
