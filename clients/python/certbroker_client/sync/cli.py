"""``certbroker sync haproxy|nginx``: run a sync agent beside a proxy.

Hooked into the ``certbroker`` CLI through :func:`add_sync_parser` and
:func:`run_sync`; also runnable alone as ``python -m certbroker_client.sync.cli``.

Like ``certbroker router``, the agent reaches the broker over mTLS with a
client certificate the broker maps to the ``router`` role: only that role
receives private keys. Exit codes: 0 after SIGINT/SIGTERM, 2 bad usage or
unreadable files, 1 the agent could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
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
from certbroker_client.client import BrokerClient
from certbroker_client.sync.follow import ReportHook, Syncer, SyncTarget
from certbroker_client.sync.haproxy import DEFAULT_PREFIX, HAProxyRuntime, HAProxyTarget
from certbroker_client.sync.nginx import NginxTarget

__all__ = ["add_sync_parser", "main", "run_sync"]

log = logging.getLogger("certbroker.sync")


def add_sync_parser(subparsers: Any) -> None:
    """Add the ``sync`` verb (with ``haproxy`` and ``nginx``) to the ``certbroker`` CLI."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sync",
        help="feed HAProxy or nginx the broker's certificates, live, without reloads",
        description=(
            "Follow the broker's WatchStatus stream (mTLS with a router identity) and keep "
            "a proxy serving exactly its certificates."
        ),
    )
    _add_arguments(p)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    targets = p.add_subparsers(dest="sync_target", metavar="TARGET", required=True)
    h = targets.add_parser(
        "haproxy",
        help="through HAProxy's runtime API (admin socket); keys stay in memory",
        description="Apply every change through HAProxy's admin socket: no reload, no key on disk.",
    )
    _common(h)
    h.add_argument(
        "--socket", required=True, help="HAProxy admin socket (stats socket ... level admin)"
    )
    h.add_argument(
        "--crt-list", required=True, help="the crt-list the HTTPS frontend binds with (its path)"
    )
    h.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"name prefix of the agent's in-memory certificate stores ({DEFAULT_PREFIX!r})",
    )
    n = targets.add_parser(
        "nginx",
        help="as <name>.pem files nginx loads per handshake ($ssl_server_name)",
        description=(
            "Write each name's chain and key atomically into a directory (mount it on tmpfs)."
        ),
    )
    _common(n)
    n.add_argument("--dir", required=True, type=Path, help="the directory nginx loads from")
    n.add_argument("--group", help="make files 0640 with this group (nginx's workers); else 0600")
    n.add_argument("--map-file", type=Path, help="write the nginx map fragment for wildcards here")
    n.add_argument(
        "--reload-command",
        help="run when the map fragment changes (e.g. 'nginx -s reload'); else a warning is logged",
    )


def _common(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    p.add_argument(
        "--router-id",
        default=None,
        help="how this agent names itself in its reports to the broker (default: hostname)",
    )
    p.add_argument("--app", action="append", default=[], help="serve only this app (repeatable)")
    p.add_argument("--domain", action="append", default=[], dest="domains", help="only this domain")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds without events or heartbeats before reconnecting (60)",
    )
    p.add_argument(
        "--check-interval",
        type=float,
        default=1.0,
        help="seconds between checks that the proxy still has its certificates (1)",
    )
    p.add_argument(
        "--resync-interval",
        type=float,
        default=60.0,
        help="seconds between full reconciles of the proxy with the broker's state (60)",
    )
    p.add_argument(
        "--report-interval",
        type=float,
        default=10.0,
        help="seconds between reports of the applied revision to the broker, until the "
        "broker asks for another interval (10)",
    )


def _target(args: argparse.Namespace) -> SyncTarget:
    try:
        if args.sync_target == "haproxy":
            return HAProxyTarget(HAProxyRuntime(args.socket), args.crt_list, args.prefix)
        if not args.dir.is_dir():
            raise UsageError(f"--dir {str(args.dir)!r}: not a directory")
        return NginxTarget(
            args.dir,
            group=args.group,
            map_file=args.map_file,
            reload_command=args.reload_command,
        )
    except (ValueError, KeyError) as error:  # a bad prefix, an unknown --group
        raise UsageError(str(error).strip("'\"")) from None


def _intervals(args: argparse.Namespace) -> None:
    for flag in ("idle_timeout", "check_interval", "resync_interval", "report_interval"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be more than 0")


def report_hook(client: BrokerClient, router_id: str) -> ReportHook:
    """What the agent tells the broker it serves: its identity and the revision applied."""

    async def report(applied_revision: int, domain_count: int) -> float | None:
        # The follow loop calls this every --report-interval and soon after each
        # change; errors raised here are logged and never stop it.
        await client.report_serving(router_id, applied_revision, domain_count)
        return client.report_interval.total_seconds()  # the broker's, from its reply

    return report


async def _serve(args: argparse.Namespace) -> int:
    _intervals(args)
    addr, tls = connection(args)
    target = _target(args)
    router_id = args.router_id or socket.gethostname()
    if tls is None:
        log.warning("no --tls-* given: a plaintext broker never sends keys, nothing will be served")
    client = BrokerClient.connect(addr, tls=tls)
    syncer = Syncer(
        client,
        target,
        apps=args.app,
        domains=args.domains,
        idle_timeout=args.idle_timeout,
        check_interval=args.check_interval,
        resync_interval=args.resync_interval,
        report_interval=args.report_interval,
        report=report_hook(client, router_id),
    )
    log.info("sync %s as %s from broker %s", target.kind, router_id, addr)
    stop = stop_on_signals()
    running = asyncio.create_task(syncer.run())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (running, stopping):
            task.cancel()
        await asyncio.gather(running, stopping, return_exceptions=True)
        await client.close()
    if running.done() and not running.cancelled() and running.exception() is not None:
        error = running.exception()
        print(f"error: the agent stopped: {error}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return EXIT_OK


def run_sync(args: argparse.Namespace) -> int:
    """Run the agent until SIGINT/SIGTERM; the exit code."""
    return run_until_stopped(_serve, args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m certbroker_client.sync.cli haproxy|nginx [flags]``: the verb alone."""
    parser = argparse.ArgumentParser(prog="certbroker sync")
    _add_arguments(parser)
    return run_sync(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
