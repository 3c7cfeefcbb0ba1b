"""``certbroker``: the seed's domain commands, talking to a broker over gRPC.

The verbs follow the seed's CLI (``domains-add --no-letsencrypt``,
``domains-ssl --cert --key``) so the documentation's examples work as
written. Exit codes: 0 ok, 1 the broker said no (or could not be reached),
2 bad usage or an unreadable local file, 130 interrupted (143 on SIGTERM). Errors are one line
on stderr (plus one per field violation), never a traceback: a person reads
them, and scripts read the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TextIO, cast

from certbroker.v1 import broker_pb2
from certbroker_client import render
from certbroker_client.client import DEFAULT_ADDR, BrokerClient, BrokerError, TlsFiles
from certbroker_client.router_cli import add_router_parser, run_router
from certbroker_client.sync.cli import add_sync_parser, run_sync

__all__ = ["main"]

EXIT_OK = 0
EXIT_RPC = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


_OWNER_HELP = (
    "the app that owns the domain (required by the broker's api role; "
    "only an admin may leave it out)"
)


class UsageError(Exception):
    """Bad input caught before any RPC (exit 2)."""


def _common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Connection and output options, accepted before or after the verb.

    Given on the sub-command they default to SUPPRESS so they never overwrite
    a value given before the verb (argparse copies sub-parser defaults over
    the main namespace otherwise).
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--addr",
        default=default(None),
        help=f"broker host:port (env CERTBROKER_ADDR, default {DEFAULT_ADDR})",
    )
    parser.add_argument(
        "--tls-ca", default=default(None), help="CA file (env CERTBROKER_CLIENT_CA)"
    )
    parser.add_argument(
        "--tls-cert", default=default(None), help="client certificate (env CERTBROKER_CLIENT_CERT)"
    )
    parser.add_argument(
        "--tls-key", default=default(None), help="client key (env CERTBROKER_CLIENT_KEY)"
    )
    parser.add_argument(
        "--tls-server-name", default=default(None), help="name to verify in the broker certificate"
    )
    parser.add_argument(
        "--timeout", type=float, default=default(30.0), help="seconds per call (default 30)"
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print the proto's JSON"
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; exposed so tests and docs can inspect it."""
    parser = argparse.ArgumentParser(
        prog="certbroker",
        description="Manage the TLS certificates of custom domains through a certbroker.",
    )
    _common_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common_options(p, suppress=True)
        return p

    sub.add_parser(
        "serve",
        help="run the broker (configured by CERTBROKER_* environment variables)",
    )

    p = command("domains-add", "add a domain to an app (Let's Encrypt unless --no-letsencrypt)")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--app", required=True)
    p.add_argument(
        "--no-letsencrypt",
        action="store_true",
        help="never contact Let's Encrypt for this domain",
    )
    p.add_argument("--cert", type=Path, help="custom certificate (PEM bundle or DER)")
    p.add_argument("--key", type=Path, help="private key of the custom certificate")

    p = command("domains-ssl", "install (--cert/--key) or remove (--disable) a custom certificate")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--app", help=_OWNER_HELP)
    p.add_argument("--cert", type=Path, help="certificate (PEM bundle or DER)")
    p.add_argument("--key", type=Path, help="private key")
    p.add_argument(
        "--disable",
        action="store_true",
        help="remove the custom certificate; Let's Encrypt serves again",
    )

    p = command("domains-remove", "forget a domain and its certificates")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--app", help=_OWNER_HELP)

    p = command("domains", "list domains")
    p.add_argument("--app", help="only this app's domains")

    p = command("status", "show everything about one domain")
    p.add_argument("domain", metavar="DOMAIN")

    command("routers", "list the routers reporting what they serve, and how far behind they are")

    p = command("watch", "print changes live, one line each (Ctrl-C stops)")
    p.add_argument(
        "--since",
        type=int,
        default=0,
        metavar="REV",
        help="changes after this revision (default 0: a snapshot first)",
    )
    p.add_argument("--app", action="append", default=[], help="only this app (repeatable)")
    p.add_argument(
        "--domain",
        action="append",
        default=[],
        dest="domains",
        help="only this domain (repeatable)",
    )
    p.add_argument("--count", type=int, default=0, help="stop after this many events")
    add_router_parser(sub)
    add_sync_parser(sub)
    return parser


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError(f"cannot read {what} file {str(path)!r}: {reason}") from None


def _cert_and_key(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    """Both files read up front, so a typo fails before anything changes."""
    cert: Path | None = args.cert
    key: Path | None = args.key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError("--cert and --key go together")
    return _read_file(cert, "--cert"), _read_file(key, "--key")


def _tls_from(args: argparse.Namespace) -> TlsFiles | None:
    env = os.environ

    def pick(flag: str | None, var: str) -> Path | None:
        value = flag or env.get(var)
        return Path(value) if value else None

    ca = pick(args.tls_ca, "CERTBROKER_CLIENT_CA")
    cert = pick(args.tls_cert, "CERTBROKER_CLIENT_CERT")
    key = pick(args.tls_key, "CERTBROKER_CLIENT_KEY")
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    for path, what in ((ca, "--tls-ca"), (cert, "--tls-cert"), (key, "--tls-key")):
        if path is not None:
            _read_file(path, what)  # fail as a usage error before gRPC sees it
    return TlsFiles(ca=ca, cert=cert, key=key, server_name=args.tls_server_name)


class _Output:
    """Where results and errors go; injected so tests can capture both."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err

    def print(self, text: str) -> None:
        # Flushed per line: `watch` is read live through pipes.
        print(text, file=self.out, flush=True)

    def error(self, lines: Sequence[str]) -> None:
        for line in lines:
            print(line, file=self.err, flush=True)


async def _domains_add(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    custom = _cert_and_key(args)
    domain = await client.issue_certificate(
        args.domain, args.app, disable_letsencrypt=args.no_letsencrypt
    )
    if custom is not None:
        try:
            domain = await client.upload_custom(domain.domain, *custom, app=args.app)
        except BrokerError as err:
            io.error(render.error_lines(err))
            io.error([f"note: {domain.domain} was added; its custom certificate was not installed"])
            return EXIT_RPC
    io.print(render.to_json(domain) if args.json else render.status_block(domain))
    return EXIT_OK


async def _domains_ssl(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    if args.disable:
        if args.cert is not None or args.key is not None:
            raise UsageError("--disable takes no --cert/--key")
        domain = await client.delete_custom(args.domain, app=args.app or "")
    else:
        custom = _cert_and_key(args)
        if custom is None:
            raise UsageError("give --cert and --key, or --disable")
        domain = await client.upload_custom(args.domain, *custom, app=args.app or "")
    io.print(render.to_json(domain) if args.json else render.status_block(domain))
    return EXIT_OK


async def _domains_remove(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    revision = await client.remove_domain(args.domain, app=args.app or "")
    if args.json:
        io.print(render.to_json(broker_pb2.RemoveDomainResponse(revision=revision)))
    else:
        io.print(f"removed {args.domain} (revision {revision})")
    return EXIT_OK


async def _domains(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    domains = [d async for d in client.list_domains(args.app)]
    if args.json:
        io.print(render.to_json(broker_pb2.ListDomainsResponse(domains=domains)))
    else:
        io.print(render.domains_table(domains))
    return EXIT_OK


async def _status(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    domain = await client.get_status(args.domain)
    io.print(render.to_json(domain) if args.json else render.status_block(domain))
    return EXIT_OK


async def _routers(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    routers = await client.list_routers()
    if args.json:
        io.print(render.to_json(broker_pb2.ListRoutersResponse(routers=routers)))
    else:
        io.print(render.routers_table(routers))
    return EXIT_OK


async def _watch(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    if args.since < 0:
        raise UsageError("--since must be 0 or more")
    seen = 0
    async for event in client.watch(args.since, apps=args.app, domains=args.domains):
        io.print(render.to_json(event, one_line=True) if args.json else render.watch_line(event))
        seen += 1
        if args.count and seen >= args.count:
            break
    return EXIT_OK


_HANDLERS: dict[str, Callable[[BrokerClient, argparse.Namespace, _Output], Awaitable[int]]] = {
    "domains-add": _domains_add,
    "domains-ssl": _domains_ssl,
    "domains-remove": _domains_remove,
    "domains": _domains,
    "status": _status,
    "routers": _routers,
    "watch": _watch,
}


async def _run(args: argparse.Namespace, io: _Output, addr: str) -> int:
    # SIGTERM (e.g. `kill PID` on a running `watch`) cancels the command like
    # Ctrl-C does, so the channel closes cleanly and no traceback is printed.
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    tls = _tls_from(args)
    async with BrokerClient.connect(addr, tls=tls, timeout=args.timeout) as client:
        return await _HANDLERS[args.command](client, args, io)


def _serve() -> int:
    """Run the server in this process.

    Imported lazily and by name: the client and CLI must work where only the
    client is installed, and `serve` is the one verb that needs the server.
    """
    try:
        server = importlib.import_module("certbroker.server")
    except ImportError as err:
        raise UsageError(f"the broker is not installed here: {err}") from None
    server_main = cast(Callable[[], int], server.main)
    return server_main()


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Parse ``argv``, run one command, return the exit code."""
    io = _Output(out or sys.stdout, err or sys.stderr)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "router":
        return run_router(args)
    if args.command == "sync":
        return run_sync(args)
    if args.command == "serve":
        try:
            return _serve()
        except UsageError as exc:
            io.error([f"error: {exc}"])
            return EXIT_USAGE
    addr: str = args.addr or os.environ.get("CERTBROKER_ADDR") or DEFAULT_ADDR
    try:
        return asyncio.run(_run(args, io, addr))
    except UsageError as exc:
        io.error([f"error: {exc}"])
        return EXIT_USAGE
    except BrokerError as exc:
        io.error(render.error_lines(exc, addr=addr))
        return EXIT_RPC
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except asyncio.CancelledError:  # SIGTERM, see _run
        return EXIT_TERMINATED
    except Exception as exc:  # the CLI's promise: one line, never a traceback
        io.error([f"error: {type(exc).__name__}: {' '.join(str(exc).split())}"])
        return EXIT_RPC


if __name__ == "__main__":
    sys.exit(main())
