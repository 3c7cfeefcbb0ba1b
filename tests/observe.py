"""Test support for telemetry: scrape the metrics endpoint, capture configured logs, read spans."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client.parser import text_string_to_metric_families

from certbroker import logs
from certbroker.config import Settings


async def scrape(port: int) -> str:
    """A real HTTP GET of the broker's Prometheus endpoint on loopback."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert reply.status == 200
            return str(reply.read().decode())

    return await asyncio.to_thread(get)


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` in a scrape (parsed by prometheus_client's own parser)."""
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found.append((dict(sample.labels), float(sample.value)))
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``; None if there is none."""
    matching = [v for found, v in samples(text, name) if labels.items() <= found.items()]
    assert len(matching) <= 1, (name, labels, matching)
    return matching[0] if matching else None


@contextmanager
def captured_logs(settings: Settings) -> Iterator[io.StringIO]:
    """``logs.configure`` writing to a buffer; the logging set-up is restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_own = {name: logging.getLogger(name).level for name in logs.OWN_LOGGERS}
    buffer = io.StringIO()
    handler = logs.configure(settings, buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_own.items():
            logging.getLogger(name).setLevel(level)


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every line of a JSON log, parsed (a line that is not one JSON object fails the test)."""
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


def attribute(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def trace_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def span_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")
