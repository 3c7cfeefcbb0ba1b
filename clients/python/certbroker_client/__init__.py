"""Python client of certbroker: a typed async client and the ``certbroker`` CLI.

The generated stubs live in ``certbroker.v1``; this package adds what every
caller would otherwise write by hand: rich error decoding and a watch that
resumes by itself.
"""

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
