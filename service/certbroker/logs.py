"""Logging set-up: readable lines or one JSON object per line, with trace ids.

``CERTBROKER_LOG_FORMAT=json`` writes each record as one JSON object
(``python-json-logger``): ``time``, ``level``, ``logger``, ``message``, the
record's structured fields (``domain``, ``app``, ``from_state``, ``to_state``,
``reason`` ... passed as ``extra=``) and, when a span is active, ``trace_id``
and ``span_id`` in the W3C hex form trace backends search by. ``text`` (the
default) keeps the one-line readable form.

Levels: ``CERTBROKER_LOG_LEVEL`` applies to certbroker's own loggers only;
every library (aiosqlite, grpc, urllib3, acme ...) stays at
``CERTBROKER_LOG_LEVEL_LIBRARIES`` (WARNING): DEBUG on everything drowned the
broker's lines in aiosqlite's, one per query.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from certbroker.config import Settings

OWN_LOGGERS = ("certbroker",)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TraceIds(logging.Filter):
    """Adds ``trace_id``/``span_id`` of the active span to each record (nothing outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601 in UTC, microseconds included
        )
    return logging.Formatter(TEXT_FORMAT)


def configure(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Install the one handler on the root logger and set the levels; returns the handler.

    Idempotent: a handler installed by an earlier call is replaced, not doubled.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(settings.log_format))
    handler.addFilter(TraceIds())
    handler.set_name("certbroker")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "certbroker"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level_libraries)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(settings.log_level)
    return handler
