"""OpenTelemetry tracing, set up explicitly and passed in (no global provider).

With ``CERTBROKER_TRACES_EXPORTER`` set to ``console`` or ``otlp`` (the OTLP
exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables) every RPC gets a
span through the gRPC server interceptor. Off (the default), nothing is
installed: spans nobody exports would cost a third of a GetStatus.
"""

from __future__ import annotations

import grpc
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
