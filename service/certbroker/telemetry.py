"""OpenTelemetry tracing, set up explicitly and passed in (no global provider).

With ``CERTBROKER_TRACES_EXPORTER`` set to ``console`` or ``otlp`` (the OTLP
exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables) every RPC gets a
span through the gRPC server interceptor. Off (the default), nothing is
installed: spans nobody exports would cost a third of a GetStatus.

The slow part has spans too: each scheduler step for a domain is a trace
(``certbroker.step``) whose children are its DNS checks, the quota
reservation, the order with its authorizations and ACME requests, and the
store writes, every one carrying ``certbroker.domain``. ``spanned`` is the
one-line decorator that makes a method such a span; components take a
``trace.Tracer`` (a ``NoOpTracer`` by default) in their constructors.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)


def tracer_provider(
    exporter: str, span_exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """The provider for the configured exporter, or None when tracing is off.

    ``span_exporter`` replaces the configured one (tests pass an in-memory exporter;
    spans then go out synchronously).
    """
    chosen = span_exporter
    if chosen is None and exporter == "console":
        chosen = ConsoleSpanExporter()
    elif chosen is None and exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        chosen = OTLPSpanExporter()
    if chosen is None:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": "certbroker"}))
    processor = SimpleSpanProcessor(chosen) if span_exporter else BatchSpanProcessor(chosen)
    provider.add_span_processor(processor)
    return provider


WATCH_METHOD = "WatchStatus"


def server_interceptor(provider: TracerProvider) -> grpc.aio.ServerInterceptor:
    """A span per unary RPC; health checks left out (they would drown everything else).

    WatchStatus is left out too: the interceptor only wraps async-generator streams,
    and the watch handler writes with ``context.write`` so a stalled reader can time
    out. The servicer opens the watch's span itself.
    """
    skip = filters.any_of(filters.health_check(), filters.method_name(WATCH_METHOD))
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=filters.negate(skip)
    )
    return interceptor


#: The span attribute that links a span to its domain (search a trace backend by it).
DOMAIN_ATTRIBUTE = "certbroker.domain"


def domain_of(value: object) -> str:
    """The domain name in a method's first argument: a name, a ``Domain`` or an order."""
    if isinstance(value, str):
        return value
    for attribute in ("name", "domain"):
        found = getattr(value, attribute, None)
        if isinstance(found, str):
            return found
    return ""


class _Traced(Protocol):
    _tracer: trace.Tracer


S = TypeVar("S", bound=_Traced)
P = ParamSpec("P")
R = TypeVar("R")


def spanned(
    name: str,
) -> Callable[
    [Callable[Concatenate[S, P], Awaitable[R]]], Callable[Concatenate[S, P], Awaitable[R]]
]:
    """Run an async method inside span ``name``, linked to the domain its first argument names.

    A decorator rather than a ``with`` block in the body: the method reads the
    same, and the span moves with it when the code is reorganised. Exceptions
    end the span with ERROR and the exception recorded.
    """

    def decorate(
        method: Callable[Concatenate[S, P], Awaitable[R]],
    ) -> Callable[Concatenate[S, P], Awaitable[R]]:
        @functools.wraps(method)
        async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
            domain = domain_of(args[0]) if args else ""
            with self._tracer.start_as_current_span(name, attributes={DOMAIN_ATTRIBUTE: domain}):
                return await method(self, *args, **kwargs)

        return wrapper

    return decorate
