"""What the long-running verbs that follow the broker as a router share.

``certbroker router`` (router_cli.py) and ``certbroker sync`` (sync/cli.py)
connect the same way (``--addr``/``--tls-*`` flags falling back to the
``CERTBROKER_ADDR``/``CERTBROKER_CLIENT_*`` variables), stop the same way
(SIGINT/SIGTERM) and report bad usage the same way (one line, exit 2), so
those parts live here once: a fix to one (a check on the TLS files, say)
reaches both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from certbroker_client.client import DEFAULT_ADDR, TlsFiles

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "add_connection_arguments",
    "connection",
    "run_until_stopped",
    "stop_on_signals",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad flag value, reported as one line and exit 2."""


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    """``--addr`` and the ``--tls-*`` flags of a router identity.

    They default to SUPPRESS so that, given before the verb, the main
    parser's values are not overwritten by the sub-parser's defaults.
    """
    s = argparse.SUPPRESS
    p.add_argument(
        "--addr", default=s, help=f"broker host:port (env CERTBROKER_ADDR, {DEFAULT_ADDR})"
    )
    p.add_argument("--tls-ca", default=s, help="CA of the broker (env CERTBROKER_CLIENT_CA)")
    p.add_argument(
        "--tls-cert", default=s, help="router client certificate (env CERTBROKER_CLIENT_CERT)"
    )
    p.add_argument("--tls-key", default=s, help="router client key (env CERTBROKER_CLIENT_KEY)")
    p.add_argument("--tls-server-name", default=s, help="name to verify in the broker certificate")


def connection(args: argparse.Namespace) -> tuple[str, TlsFiles | None]:
    """The broker's address and TLS files from the flags, else the environment.

    None for TLS when no file is named (plaintext). Raises :class:`UsageError`
    when only one of cert and key is named or a named file does not exist, so
    the mistake is one line before gRPC ever sees it.
    """
    env = os.environ

    def pick(name: str, var: str) -> str | None:
        value = getattr(args, name, None) or env.get(var)
        return value or None

    addr = pick("addr", "CERTBROKER_ADDR") or DEFAULT_ADDR
    paths = {
        "ca": pick("tls_ca", "CERTBROKER_CLIENT_CA"),
        "cert": pick("tls_cert", "CERTBROKER_CLIENT_CERT"),
        "key": pick("tls_key", "CERTBROKER_CLIENT_KEY"),
    }
    if not any(paths.values()):
        return addr, None
    if (paths["cert"] is None) != (paths["key"] is None):
        raise UsageError("--tls-cert and --tls-key go together")
    for what, path in paths.items():
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"--tls-{what} {path!r}: no such file")
    return addr, TlsFiles(
        ca=Path(paths["ca"]) if paths["ca"] else None,
        cert=Path(paths["cert"]) if paths["cert"] else None,
        key=Path(paths["key"]) if paths["key"] else None,
        server_name=getattr(args, "tls_server_name", None),
    )


def stop_on_signals() -> asyncio.Event:
    """An event the running loop sets on SIGINT or SIGTERM (where it can take handlers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def run_until_stopped(
    serve: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    """Run ``serve(args)`` in a new event loop; its exit code, or 2 on bad usage.

    Logs go to stderr at INFO unless the caller configured logging already.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        return asyncio.run(serve(args))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
