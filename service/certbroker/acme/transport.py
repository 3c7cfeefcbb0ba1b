"""How ACME requests travel: the issuer's own thread pool, one client per thread, step retries.

Three facts shape this module:

- ``acme`` is blocking (requests). Every call runs in the transport's *own*
  thread pool, never the default one, so ACME work cannot starve or be
  starved by other ``to_thread`` users; ``max_workers`` bounds the requests in
  flight.
- requests sessions are not documented as thread-safe, and a nonce handed to
  two threads is a ``badNonce``: each worker thread gets its own
  ``ClientNetwork`` (own session and nonce pool), created on first use.
- Some failures are gone a moment later (``badNonce``, connection reset or
  refused, timeouts, 5xx). ``StepRetry`` retries exactly those
  (``problems.is_transient``) a few times with short waits; every other failure
  surfaces at once as ``AcmeProblem`` for the scheduler's backoff. The policy
  is a typed value with the same doubling ``Backoff`` the scheduler uses, not a
  loop of its own.

Tracing: ``submit`` runs each call in a copy of the caller's context
(``run_in_executor`` does not carry it, unlike ``to_thread``), and
``with_client`` makes each ACME request a client span *in the worker thread*
(``acme.new_order``, ``acme.fetch_authz``, ``acme.finalize`` ...), so those
spans, and any log line there, belong to the order's trace; they carry
``certbroker.domain`` from ``ORDER_DOMAIN``, which the issuer sets per order.

Contract of ``Transport.call``: raises ``AcmeProblem`` (classified by
``problems.classify``) and nothing else from the step; ``RuntimeError`` once
closed. Cancelling the awaiting task does not stop a request already running
in a thread (``close`` waits for those).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, TypeVar, cast

import requests
from josepy import jwa, jwk
from opentelemetry import trace

from acme import client, messages
from certbroker.acme.problems import AcmeProblem, HttpStatusError, classify, is_transient
from certbroker.backoff import Backoff
from certbroker.telemetry import DOMAIN_ATTRIBUTE

T = TypeVar("T")
USER_AGENT: Final = "certbroker-acme"
#: The domain of the order being driven (set by the issuer in the order's task; copied
#: into the worker threads with the rest of the context), for the request spans.
ORDER_DOMAIN: contextvars.ContextVar[str] = contextvars.ContextVar("acme_order_domain", default="")


@dataclass(frozen=True)
class StepRetry:
    """Retries of one ACME request inside a step: transient failures only, a few quick tries.

    ``attempts`` counts the first try. Waits follow ``backoff`` (50 ms doubling,
    at most 1 s) plus up to ``jitter`` of random spread, so threads that failed
    together do not retry together.
    """

    attempts: int = 4
    backoff: Backoff = field(
        default_factory=lambda: Backoff(timedelta(milliseconds=50), timedelta(seconds=1))
    )
    jitter: timedelta = timedelta(milliseconds=50)

    def wait(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive transient failure."""
        spread = random.uniform(0, self.jitter.total_seconds())
        return self.backoff.delay(failures).total_seconds() + spread

    def run(
        self, fn: Callable[..., T], *args: Any, sleep: Callable[[float], None] = time.sleep
    ) -> T:
        """Call ``fn(*args)`` in this (worker) thread; re-raise the last error when out of tries."""
        for failures in range(1, self.attempts + 1):
            try:
                return fn(*args)
            except Exception as error:
                if failures >= self.attempts or not is_transient(error):
                    raise
                sleep(self.wait(failures))
        raise AssertionError("unreachable")  # pragma: no cover - attempts >= 1


class Network(client.ClientNetwork):
    """``ClientNetwork`` that keeps what classification needs from error responses.

    acme raises ``messages.Error`` without the HTTP response, so the status and
    ``Retry-After`` (needed for rateLimited) would be lost; and a non-JSON error
    page becomes a generic ``ClientError``. We attach the former and raise
    ``HttpStatusError`` for the latter.
    """

    @classmethod
    def _check_response(
        cls, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        if not response.ok and response.status_code != 409:
            try:
                response.json()
            except ValueError:
                raise HttpStatusError(
                    response.status_code, response.headers.get("Retry-After")
                ) from None
        try:
            checked: requests.Response = super()._check_response(
                response, content_type=content_type
            )
        except messages.Error as error:
            error.http_status = response.status_code
            error.retry_after_header = response.headers.get("Retry-After")
            raise
        return checked


@dataclass(frozen=True)
class Identity:
    """Who signs: the account key, its JWS algorithm, and (once known) the account."""

    key: jwk.JWK
    alg: jwa.JWASignature
    account: messages.RegistrationResource | None = None


class Transport:
    """The issuer's pool and per-thread clients; ``close()`` after use. No I/O in __init__."""

    def __init__(
        self,
        *,
        ca_bundle: str | None,
        http_timeout: int = 15,
        max_workers: int = 16,
        retry: StepRetry | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._tracer = tracer or trace.NoOpTracer()
        # requests takes a CA bundle path where acme's annotation says bool.
        self._verify = cast(bool, ca_bundle if ca_bundle else True)
        self._http_timeout = http_timeout
        self.retry = retry or StepRetry()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="acme"
        )
        self._local = threading.local()
        self._nets: list[client.ClientNetwork] = []
        self._nets_lock = threading.Lock()
        self._inflight: set[asyncio.Future[Any]] = set()
        self._directory: messages.Directory | None = None
        self._identity: Identity | None = None
        self._generation = 0
        self._closed = False

    @property
    def directory(self) -> messages.Directory:
        if self._directory is None:
            raise RuntimeError("the ACME directory has not been fetched")
        return self._directory

    def use(self, directory: messages.Directory, identity: Identity) -> None:
        """Sign with ``identity`` from now on (threads build their clients on first use)."""
        self._directory = directory
        self._identity = identity
        self._generation += 1  # threads drop clients signing as an older account

    def network(self, identity: Identity | None = None) -> Network:
        """A fresh network object (own session); the caller closes ``.session``."""
        return Network(
            key=identity.key if identity else None,
            account=identity.account if identity else None,
            alg=identity.alg if identity else jwa.RS256,
            verify_ssl=self._verify,
            user_agent=USER_AGENT,
            timeout=self._http_timeout,
        )

    def _client(self) -> client.ClientV2:
        acme: client.ClientV2 | None = getattr(self._local, "client", None)
        if acme is not None and getattr(self._local, "generation", -1) != self._generation:
            acme = None  # the account changed (recovered): a new client with the new identity
        if acme is None:
            if self._identity is None or self._identity.account is None:
                raise RuntimeError("no ACME account in use yet")
            net = self.network(self._identity)
            acme = client.ClientV2(self.directory, net)
            self._local.client = acme
            self._local.generation = self._generation
            with self._nets_lock:
                self._nets.append(net)
        return acme

    async def submit(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call in the pool (never the default one); raw errors, no retries."""
        if self._closed:
            raise RuntimeError("the ACME transport is closed")
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the caller's trace goes into the thread
        future = loop.run_in_executor(self._pool, functools.partial(context.run, fn, *args))
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return await future

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the pool with step retries; failures as ``AcmeProblem``."""
        try:
            return await self.submit(self.retry.run, fn, *args)
        except AcmeProblem:
            raise
        except Exception as error:
            raise classify(error) from error

    async def with_client(self, step: Callable[..., T], *args: Any) -> T:
        """``call`` a step that takes this thread's account client as first argument.

        Each attempt is an ``acme.<step>`` client span, made in the worker thread.
        """
        name = f"acme.{step.__name__.lstrip('_')}"

        def attempt(*a: Any) -> T:
            attributes = {DOMAIN_ATTRIBUTE: ORDER_DOMAIN.get()}
            with self._tracer.start_as_current_span(
                name, kind=trace.SpanKind.CLIENT, attributes=attributes
            ):
                return step(self._client(), *a)

        return await self.call(attempt, *args)

    async def close(self) -> None:
        """Stop accepting work, let in-flight requests end, close sessions and the pool."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        with self._nets_lock:
            nets, self._nets = self._nets, []
        for net in nets:
            with contextlib.suppress(Exception):
                net.session.close()

    @property
    def closed(self) -> bool:
        return self._closed
