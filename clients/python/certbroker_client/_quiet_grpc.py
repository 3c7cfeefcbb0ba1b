"""Keep gRPC's C core off the CLI user's terminal; imported for that effect alone.

A failed TLS handshake makes the C core print lines such as
``I1129 ... ssl_transport_security.cc:2563] Handshake failed ...`` on stderr,
beside the CLI's own one-line error that already says it. The C core reads
``GRPC_VERBOSITY`` and ``GRPC_TRACE`` once, when ``grpc`` is first imported,
so this module must run before that: ``certbroker_client.cli`` imports it
first (the package ``__init__`` imports nothing that pulls in ``grpc``).

Values the user set are kept (``GRPC_VERBOSITY=DEBUG certbroker ...`` still
debugs), and ``certbroker serve`` is left alone: the broker's own start-up
decides what its logs say.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping, Sequence

__all__ = ["quiet"]

# Global options that take a value: the verb is the first word that is not one of their values.
_VALUED = frozenset(
    {"--addr", "--app", "--tls-ca", "--tls-cert", "--tls-key", "--tls-server-name", "--timeout"}
)


def _verb(argv: Sequence[str]) -> str | None:
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def quiet(argv: Sequence[str], environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``GRPC_VERBOSITY=NONE`` and ``GRPC_TRACE=""`` unless set, or the verb is ``serve``."""
    if _verb(argv) == "serve":
        return
    environ.setdefault("GRPC_VERBOSITY", "NONE")
    environ.setdefault("GRPC_TRACE", "")


quiet(sys.argv[1:])
