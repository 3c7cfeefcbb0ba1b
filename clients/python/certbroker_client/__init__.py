"""Python client of certbroker: a typed async client and the ``certbroker`` CLI.

The generated stubs live in ``certbroker.v1``; this package adds what every
caller would otherwise write by hand: rich error decoding and a watch that
resumes by itself.

The names below are imported on first use (PEP 562) rather than here: the
``certbroker`` CLI must set gRPC's logging variables before anything imports
``grpc`` (the C core reads them once, at import), and importing any module of
this package runs this file first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from certbroker_client.client import (
        DEFAULT_ADDR,
        BrokerClient,
        BrokerError,
        FieldViolation,
        TlsFiles,
        WatchEvent,
    )

__all__ = [
    "DEFAULT_ADDR",
    "BrokerClient",
    "BrokerError",
    "FieldViolation",
    "TlsFiles",
    "WatchEvent",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("certbroker_client.client"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
