"""Prometheus metrics through the OpenTelemetry metrics SDK, passed in explicitly.

``Metrics()``, the default every constructor takes, records nothing: its
instruments come from the no-op meter and it keeps no fleet index, so tests and
a broker with ``CERTBROKER_METRICS_LISTEN=off`` pay next to nothing.
``Metrics.prometheus(clock)`` records into its own ``prometheus_client``
registry (never the library's global one), which ``MetricsEndpoint`` serves for
Prometheus to scrape.

Callers record through small methods named after what happened
(``order_finished``, ``dns_checked``, ``rpc_finished`` ...), one line each, so
the instrumentation moves with the code that calls it.

The per-domain figures (the expiry gauge, domains by state, the due queue,
quota holds) are observable instruments computed at scrape time from ``Fleet``:
a small index of what each domain serves, built by one scan at start and kept
by the store's commit observer (``certbroker.journal``), so a scrape only ever
shows committed data. Not from the store's domain cache: that cache holds only
rows written since the start (reads do not fill it) and is dropped whole past
200,000 rows, so after a restart the expiry gauge would be empty until every
domain happened to be written again.

Cardinality: the expiry gauge has one series per *serving* domain (bounded by
the fleet, never by attempts); every other label comes from a fixed set
(states, sources, outcomes, reason codes, check kinds, RPC methods and codes).

Quota headroom is exposed as the number of domains held back by a quota or a
CA rate limit, by reason, next to the configured limits: usage per registered
domain would be one series per customer zone (unbounded), and the CA's
account-wide limits are not visible to the broker before it hits them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple
from wsgiref.simple_server import WSGIServer

from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    NoOpMeterProvider,
    Observation,
)
from opentelemetry.sdk.metrics import MeterProvider, ObservableGauge
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

from certbroker import limits
from certbroker.clock import Clock
from certbroker.model import Domain, LetsEncryptState, Source
from certbroker.store.base import Change

if TYPE_CHECKING:
    from certbroker.store.base import Store

#: Reasons that hold a domain back for a quota (``certbroker.limits``: the local buckets,
#: and a pause after the CA's own rate limit).
QUOTA_REASONS = (
    limits.QUOTA_ACCOUNT_ORDERS,
    limits.QUOTA_REGISTERED_DOMAIN,
    limits.QUOTA_NAME_SET,
    limits.QUOTA_FAILED_AUTHORIZATIONS,
    limits.CA_RATE_LIMITED,
)
_STATES = tuple(state.value for state in LetsEncryptState)
# One series per serving domain: the SDK's default cap (2,000 per instrument) would fold
# the rest of a real fleet into an overflow series.
_MAX_SERIES = 10_000_000
_LOAD_PAGE = 1000
# Bucket bounds, seconds: a store write, an ACME order, and a new domain (which waits
# for its customer's DNS: minutes to days).
_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_ORDER_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
_READY_BUCKETS = (10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400)


class _Entry(NamedTuple):
    """What the scrape-time gauges need of one domain (times as Unix seconds)."""

    app: str
    state: str
    source: str
    expires: float | None  # notAfter of what serves; None when nothing does
    next_run: float | None
    held: str  # a QUOTA_REASONS reason while held back by it, else ""
    held_until: float


def _entry(domain: Domain) -> _Entry:
    cert = {Source.CUSTOM: domain.custom_cert, Source.LETS_ENCRYPT: domain.le_cert}.get(
        domain.serving
    )
    retry = domain.retry
    held = retry.last_error_reason if retry.last_error_reason in QUOTA_REASONS else ""
    until = retry.next_attempt_at
    return _Entry(
        app=domain.app,
        state=domain.le_state.value,
        source=domain.serving.value,
        expires=cert.not_after.timestamp() if cert is not None else None,
        next_run=domain.next_run_at.timestamp() if domain.next_run_at else None,
        held=held if until is not None else "",
        held_until=until.timestamp() if until is not None else 0.0,
    )


class Fleet:
    """Every domain's ``_Entry``, kept from committed changes.

    Written on the event loop, read by the scrape thread: readers take a copy
    (``list(dict.items())`` runs without releasing the GIL), never iterate live.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def apply(self, changes: Iterable[Change]) -> None:
        for change in changes:
            if change.after is None:
                if change.before is not None:
                    self._entries.pop(change.before.name, None)
            else:
                self._entries[change.after.name] = _entry(change.after)

    async def load(self, store: Store) -> int:
        """One scan of the store, a page at a time (before the broker takes writes).

        Returns the number of domains indexed.
        """
        after = ""
        while True:
            page = await store.list_domains(None, after, _LOAD_PAGE)
            for domain in page:
                self._entries[domain.name] = _entry(domain)
            if len(page) < _LOAD_PAGE:
                return len(self._entries)
            after = page[-1].name

    def snapshot(self) -> list[tuple[str, _Entry]]:
        return list(self._entries.items())


class Metrics:
    """Every instrument of the broker; a no-op unless built with a ``MeterProvider``."""

    def __init__(self, provider: MeterProvider | None = None, clock: Clock | None = None) -> None:
        self.enabled = provider is not None
        self.provider = provider
        self._clock = clock
        self.fleet = Fleet()
        meter: Meter = (provider or NoOpMeterProvider()).get_meter("certbroker")
        self._meter = meter
        self._orders = meter.create_counter(
            "certbroker_orders",
            unit="{order}",
            description="Certificate orders by outcome (issued, failed, held) and reason code",
        )
        self._order_duration = meter.create_histogram(
            "certbroker_order_duration",
            unit="s",
            description="From an order's reservation to its certificate stored",
            explicit_bucket_boundaries_advisory=_ORDER_BUCKETS,
        )
        self._ready_duration = meter.create_histogram(
            "certbroker_domain_ready_duration",
            unit="s",
            description="From a domain's addition to its first certificate in use (IN_USE)",
            explicit_bucket_boundaries_advisory=_READY_BUCKETS,
        )
        self._dns_checks = meter.create_counter(
            "certbroker_dns_checks",
            unit="{check}",
            description="Pre-flight DNS checks (points, caa, delegation) by outcome",
        )
        self._store_writes = meter.create_histogram(
            "certbroker_store_write_duration",
            unit="s",
            description="Write transactions, waiting for the single writer included",
            explicit_bucket_boundaries_advisory=_WRITE_BUCKETS,
        )
        # RPCs are counted in a plain dict and read at scrape time: a synchronous SDK
        # instrument costs ~10 us per call here (attribute cleaning and hashing), 2-5 % of
        # a GetStatus; for the same reason there is no per-RPC latency histogram.
        self._rpcs: dict[tuple[str, str], int] = {}
        meter.create_observable_counter(
            "certbroker_rpc_requests",
            callbacks=[self._rpc_counts],
            unit="{request}",
            description="RPCs answered, by method and gRPC status code",
        )
        self._gauge(
            "certbroker_certificate_expiration_timestamp",
            self._expiry,
            unit="s",
            description="notAfter of the certificate each domain serves (Unix time)",
        )
        self._gauge(
            "certbroker_domains",
            self._states,
            unit="{domain}",
            description="Domains by Let's Encrypt state",
        )
        self._gauge(
            "certbroker_quota_held_domains",
            self._held,
            unit="{domain}",
            description="Domains waiting for a quota slot or the CA's rate limit, by reason",
        )
        self._gauge(
            "certbroker_scheduler_due_domains",
            self._due,
            unit="{domain}",
            description="Domains whose next scheduled step is due now",
        )

    @classmethod
    def prometheus(cls, clock: Clock) -> tuple[Metrics, CollectorRegistry]:
        """Metrics read by a Prometheus reader into a registry of their own."""
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        registry = CollectorRegistry()
        reader = PrometheusMetricReader(
            disable_target_info=True,
            scope_info_enabled=False,  # otel_scope_* labels on every series say nothing here
            registry=registry,
            cardinality_limits={ObservableGauge: _MAX_SERIES},
        )
        provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": "certbroker"}),
            shutdown_on_exit=False,  # Running.stop shuts it down; no atexit hook per broker
        )
        return cls(provider, clock), registry

    def _gauge(
        self,
        name: str,
        read: Callable[[], Iterable[Observation]],
        *,
        unit: str,
        description: str,
    ) -> None:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return list(read())

        self._meter.create_observable_gauge(
            name, callbacks=[callback], unit=unit, description=description
        )

    # -- figures read from collaborators at scrape time -----------------------------

    def watch_streams(self, count: Callable[[], int], lag: Callable[[], int]) -> None:
        """The servicer's open WatchStatus streams and the furthest behind, in revisions."""
        self._gauge(
            "certbroker_watch_subscribers",
            lambda: [Observation(count())],
            unit="{stream}",
            description="Open WatchStatus streams",
        )
        self._gauge(
            "certbroker_watch_lag_revisions",
            lambda: [Observation(lag())],
            unit="{revision}",
            description="Revisions the slowest WatchStatus stream is behind the store",
        )

    def scheduler(self, busy: Callable[[], int]) -> None:
        self._gauge(
            "certbroker_scheduler_busy_domains",
            lambda: [Observation(busy())],
            unit="{domain}",
            description="Domains the scheduler is working right now",
        )

    def ca_health(self, available: Callable[[], bool], paused: Callable[[], float]) -> None:
        """The CA as the scheduler sees it (``ca_health.CaHealth``): up, and time spent paused."""
        self._gauge(
            "certbroker_ca_available",
            lambda: [Observation(1 if available() else 0)],
            unit="1",
            description="1 while the CA answers, 0 while orders are paused for a CA outage",
        )
        self._meter.create_observable_counter(
            "certbroker_ca_paused_seconds",
            callbacks=[lambda options: [Observation(paused())]],
            unit="s",
            description="Time spent with orders paused because the CA was unavailable",
        )

    def quota_limits(self, registered_domain: int, name_set: int) -> None:
        """The configured bucket capacities, beside the held counts."""
        capacities = [
            Observation(registered_domain, {"quota": "registered_domain"}),
            Observation(name_set, {"quota": "name_set"}),
        ]
        self._gauge(
            "certbroker_quota_limit",
            lambda: capacities,
            unit="{certificate}",
            description="Capacity of the local quota buckets (certificates per bucket period)",
        )

    # -- events --------------------------------------------------------------------

    def domains_changed(self, changes: Sequence[Change], seconds: float) -> None:
        """A commit (``StoreObserver``): keep the fleet, time the write and first issuances."""
        self._store_writes.record(seconds)
        if not self.enabled:
            return
        self.fleet.apply(changes)
        for change in changes:
            before, after = change.before, change.after
            if (
                before is not None
                and after is not None
                and after.le_state is LetsEncryptState.IN_USE
                and before.le_cert is None
                and after.le_cert is not None
            ):
                ready = (after.updated_at - after.created_at).total_seconds()
                self._ready_duration.record(max(0.0, ready))

    def order_finished(
        self, outcome: str, reason: str = "", started: datetime | None = None
    ) -> None:
        """``outcome``: issued, failed or held; ``started``: when the order was reserved."""
        self._orders.add(1, {"outcome": outcome, "reason": reason})
        if started is not None and self._clock is not None:
            took = (self._clock.now() - started).total_seconds()
            self._order_duration.record(max(0.0, took))

    def dns_checked(self, check: str, outcome: str) -> None:
        self._dns_checks.add(1, {"check": check, "outcome": outcome})

    def rpc_finished(self, method: str, code: str) -> None:
        """One RPC answered with ``code`` (a ``grpc.StatusCode`` name)."""
        key = (method, code)
        self._rpcs[key] = self._rpcs.get(key, 0) + 1

    # -- scrape-time callbacks ------------------------------------------------------

    def _rpc_counts(self, options: CallbackOptions) -> Iterable[Observation]:
        counts = list(self._rpcs.items())  # a copy: the event loop keeps counting
        return [Observation(n, {"method": m, "code": c}) for (m, c), n in counts]

    def _now(self) -> float:
        return self._clock.now().timestamp() if self._clock is not None else 0.0

    def _expiry(self) -> Iterable[Observation]:
        for name, entry in self.fleet.snapshot():
            if entry.expires is not None:
                yield Observation(
                    entry.expires, {"domain": name, "app": entry.app, "source": entry.source}
                )

    def _states(self) -> Iterable[Observation]:
        counts = dict.fromkeys(_STATES, 0)
        for _, entry in self.fleet.snapshot():
            counts[entry.state] = counts.get(entry.state, 0) + 1
        return [Observation(n, {"state": state}) for state, n in counts.items()]

    def _held(self) -> Iterable[Observation]:
        now = self._now()
        counts = dict.fromkeys(QUOTA_REASONS, 0)
        for _, entry in self.fleet.snapshot():
            if entry.held and entry.held_until > now:
                counts[entry.held] += 1
        return [Observation(n, {"reason": reason}) for reason, n in counts.items()]

    def _due(self) -> Iterable[Observation]:
        now = self._now()
        due = sum(
            1
            for _, entry in self.fleet.snapshot()
            if entry.next_run is not None and entry.next_run <= now
        )
        return [Observation(due)]


class MetricsEndpoint:
    """The scrape endpoint: ``prometheus_client``'s HTTP server on its own thread.

    A thread, not the event loop: a scrape of a large fleet builds every series
    at once, and that must not stall RPCs for its whole duration.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> int:
        """Listen; returns the port (a free one for 0). Raises ``OSError`` (e.g. in use)."""
        self._server, self._thread = start_http_server(port, host, registry=self._registry)
        return int(self._server.server_address[1])

    async def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        await asyncio.to_thread(thread.join, 5)
