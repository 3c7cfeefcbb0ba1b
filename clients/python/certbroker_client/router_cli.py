"""``certbroker router``: run the reference SNI router against a broker.

Hooked into the ``certbroker`` CLI through :func:`add_router_parser` and
:func:`run_router`; also runnable alone as ``python -m certbroker_client.router_cli``.

The router must reach the broker over mTLS with a client certificate the
broker maps to the ``router`` role (``CERTBROKER_ROLES=router-1=router``):
only that role receives private keys. Exit codes: 0 after SIGINT/SIGTERM,
2 bad usage or unreadable files, 1 the listeners could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from certbroker_client._agent_cli import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_connection_arguments,
    connection,
    run_until_stopped,
    stop_on_signals,
)
from certbroker_client._agent_cli import EXIT_USAGE as EXIT_USAGE  # part of this module's API
from certbroker_client.client import TlsFiles
from certbroker_client.reference_router import HostPort, Limits, ReferenceRouter, RouterConfig
from certbroker_client.router import (
    DEFAULT_MAX_CONTEXTS,
    CertificateMap,
    MapChange,
    RouterWatcher,
    check_router_id,
)

__all__ = ["add_router_parser", "main", "run_router"]

log = logging.getLogger("certbroker.router")

# Limits' field names as the flags that set them, for error messages.
_LIMIT_FLAGS = {
    "max_connections": "--max-connections",
    "head_timeout": "--header-timeout",
    "idle_timeout": "--client-idle-timeout",
    "max_body_bytes": "--max-body-bytes",
}


def _hostport(raw: str, flag: str) -> HostPort:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{flag}={raw!r}: expected host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def add_router_parser(subparsers: Any) -> None:
    """Add the ``router`` verb to the ``certbroker`` CLI's sub-parsers.

    Connection flags (``--addr``, ``--tls-*``) default to SUPPRESS so that,
    given before the verb, the main parser's values are not overwritten.
    """
    p: argparse.ArgumentParser = subparsers.add_parser(
        "router",
        help="run the reference SNI router (HTTPS by SNI, HTTP-01 forwarding, redirects)",
        description=(
            "Serve HTTPS for every domain the broker knows, picking the certificate by SNI "
            "from its WatchStatus stream (mTLS with a router identity)."
        ),
    )
    _add_arguments(p)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    p.add_argument("--https-listen", default="127.0.0.1:8443", help="HTTPS host:port (8443)")
    p.add_argument(
        "--http-listen", default="127.0.0.1:8080", help="HTTP host:port, or 'off' (8080)"
    )
    p.add_argument(
        "--http01-forward",
        default=None,
        help="the broker's HTTP-01 responder host:port, or 'off' "
        "(env CERTBROKER_HTTP01_LISTEN, default 127.0.0.1:8402)",
    )
    p.add_argument("--upstream", default=None, help="proxy decrypted traffic to host:port")
    p.add_argument("--default-cert", type=Path, help="certificate for unknown names (PEM chain)")
    p.add_argument("--default-key", type=Path, help="key of --default-cert")
    p.add_argument(
        "--redirect-port", type=int, default=None, help="HTTPS port in redirects (listen port)"
    )
    p.add_argument("--app", action="append", default=[], help="serve only this app (repeatable)")
    p.add_argument("--domain", action="append", default=[], dest="domains", help="only this domain")
    p.add_argument(
        "--router-id",
        default=None,
        help="this router's name in the broker's ListRouters and reports (default: the hostname)",
    )
    p.add_argument(
        "--max-contexts",
        type=int,
        default=DEFAULT_MAX_CONTEXTS,
        help="TLS contexts kept built, ~30 KiB each; other names build theirs on their "
        f"first handshake (~1 ms) ({DEFAULT_MAX_CONTEXTS})",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds without events or heartbeats before reconnecting (60)",
    )
    limits = Limits()
    p.add_argument(
        "--max-connections",
        type=int,
        default=limits.max_connections,
        help=f"open client connections, both listeners; more are closed ({limits.max_connections})",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=limits.head_timeout,
        help=f"seconds for a TLS handshake or a request head ({limits.head_timeout:g})",
    )
    p.add_argument(
        "--client-idle-timeout",
        type=float,
        default=limits.idle_timeout,
        help="seconds a client connection may stay silent, between requests or when proxied "
        f"({limits.idle_timeout:g})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=limits.max_body_bytes,
        help=f"largest request body read; more gets 413 ({limits.max_body_bytes})",
    )


def _config(args: argparse.Namespace) -> tuple[RouterConfig, str, TlsFiles | None]:
    addr, tls = connection(args)
    http01 = args.http01_forward or os.environ.get("CERTBROKER_HTTP01_LISTEN") or "127.0.0.1:8402"
    if (args.default_cert is None) != (args.default_key is None):
        raise UsageError("--default-cert and --default-key go together")
    try:
        limits = Limits(
            max_connections=args.max_connections,
            head_timeout=args.header_timeout,
            idle_timeout=args.client_idle_timeout,
            max_body_bytes=args.max_body_bytes,
        )
    except ValueError as err:
        message = str(err)
        for name, flag in _LIMIT_FLAGS.items():
            message = message.replace(name, flag)
        raise UsageError(message) from None
    config = RouterConfig(
        https_listen=_hostport(args.https_listen, "--https-listen"),
        http_listen=None
        if args.http_listen == "off"
        else _hostport(args.http_listen, "--http-listen"),
        http01_forward=None if http01 == "off" else _hostport(http01, "--http01-forward"),
        upstream=_hostport(args.upstream, "--upstream") if args.upstream else None,
        default_cert=args.default_cert,
        default_key=args.default_key,
        redirect_port=args.redirect_port,
        limits=limits,
    )
    return config, addr, tls


def _log_change(change: MapChange) -> None:
    if change.resync:
        log.info("serving %d names at revision %d", len(change.updated), change.revision)
    for name in change.updated if not change.resync else ():
        log.info("revision %d: %s updated", change.revision, name)
    for name in change.removed:
        log.info("revision %d: %s no longer served", change.revision, name)


async def _serve(args: argparse.Namespace) -> int:
    config, addr, tls = _config(args)
    if tls is None:
        log.warning("no --tls-* given: a plaintext broker never sends keys, nothing will be served")
    if args.max_contexts < 1:
        raise UsageError("--max-contexts must be at least 1")
    router_id = args.router_id or socket.gethostname()
    try:
        check_router_id(router_id)
    except ValueError as err:
        raise UsageError(f"--router-id {router_id!r}: {err}") from None
    certificates = CertificateMap(max_contexts=args.max_contexts)
    watcher = RouterWatcher.connect(
        addr,
        tls,
        certificates=certificates,
        apps=args.app,
        domains=args.domains,
        on_change=_log_change,
        idle_timeout=args.idle_timeout,
        router_id=router_id,
    )
    router = ReferenceRouter(certificates, config)
    try:
        await router.start()
    except (OSError, ValueError) as err:  # port taken, unreadable default certificate
        await watcher.close()
        print(f"error: cannot start the router: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    log.info(
        "%s listening https=%s:%d http=%s; broker %s",
        router_id,
        config.https_listen[0],
        router.https_port,
        f"{config.http_listen[0]}:{router.http_port}" if config.http_listen else "off",
        addr,
    )
    stop = stop_on_signals()
    watching = asyncio.create_task(watcher.run())
    try:
        await stop.wait()
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await router.stop()
        await watcher.close()
    return EXIT_OK


def run_router(args: argparse.Namespace) -> int:
    """Run the router until SIGINT/SIGTERM; the exit code."""
    return run_until_stopped(_serve, args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m certbroker_client.router_cli [flags]``: the verb without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="certbroker router")
    _add_arguments(parser)
    return run_router(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
