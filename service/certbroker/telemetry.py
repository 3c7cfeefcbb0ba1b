"""OpenTelemetry tracing, set up explicitly and passed in (no global provider).

Every RPC gets a span through the gRPC server interceptor; spans go nowhere
unless ``CERTBROKER_TRACES_EXPORTER`` is ``console`` or ``otlp`` (the OTLP
exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables).
"""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)


def tracer_provider(exporter: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "certbroker"}))
    chosen: SpanExporter | None = None
    if exporter == "console":
        chosen = ConsoleSpanExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        chosen = OTLPSpanExporter()
    if chosen is not None:
        provider.add_span_processor(BatchSpanProcessor(chosen))
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
