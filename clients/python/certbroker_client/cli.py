"""``certbroker``: the seed's domain commands, talking to a broker over gRPC.

The verbs follow the seed's CLI (``domains-add --no-letsencrypt``,
``domains-ssl --cert --key``) and the platform's syntax: global options such
as ``--app``, ``--addr``, ``--json`` and ``--tls-*`` go before or after the
verb (``scalingo --app my-app domains-add ...`` works as written), so the
documentation's examples work as written.

Exit codes: 0 ok, 1 the broker said no (or could not be reached; for
``--wait``: the domain stopped without a certificate serving; for ``doctor``:
issuance would not succeed now), 2 bad usage or an unreadable local file, 124
``--wait`` ran out of time, 130 interrupted (143 on SIGTERM). Errors are one
line on stderr (a violation or a hint only when it adds something), never a
traceback: a person reads them, and scripts read the exit code.
"""

from __future__ import annotations

# First, before anything imports grpc: keeps the C core's log lines off the terminal.
import certbroker_client._quiet_grpc  # noqa: F401  isort: skip

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO, cast

from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client import render, wait
from certbroker_client.client import DEFAULT_ADDR, BrokerClient, BrokerError, TlsFiles
from certbroker_client.migrate_cli import add_migrate_parser, run_migrate
from certbroker_client.ops_cli import OPS_COMMANDS, add_ops_parsers, run_ops
from certbroker_client.router_cli import add_router_parser, run_router
from certbroker_client.sync.cli import add_sync_parser, run_sync

__all__ = ["build_parser", "main", "parse"]

EXIT_OK = 0
EXIT_RPC = 1
EXIT_STOPPED = 1  # --wait: ACTION_REQUIRED, removed, or nothing will serve
EXIT_NOT_READY = 1  # `doctor`: a check failed, issuance would not succeed now
EXIT_USAGE = 2
EXIT_TIMEOUT = 124  # --wait ran out of time (the convention of timeout(1))
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

CALL_TIMEOUT_S = 30.0

# Verbs whose --app is a filter that may be repeated; every other verb acts for one app.
_MANY_APPS = frozenset({"watch", "router", "sync"})
# Verbs that need --app (the broker's IssueCertificate requires the calling tenant).
_NEEDS_APP = frozenset({"domains-add"})

_OWNER_HELP = (
    "the app that owns the domain (required by the broker's api role; "
    "only an admin may leave it out)"
)
_KEY_ALGORITHMS = {
    "ecdsa-p256": domain_pb2.KEY_ALGORITHM_ECDSA_P256,
    "rsa-2048": domain_pb2.KEY_ALGORITHM_RSA_2048,
}
_CHALLENGES = {
    "http-01": domain_pb2.CHALLENGE_TYPE_HTTP_01,
    "dns-01": domain_pb2.CHALLENGE_TYPE_DNS_01,
}


class UsageError(Exception):
    """Bad input caught before any RPC (exit 2)."""


def _version() -> str:
    try:
        return importlib.metadata.version("certbroker")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _global_options(
    parser: argparse.ArgumentParser, *, suppress: bool, app_help: str | None = None
) -> None:
    """Connection, output and tenant options, accepted before or after the verb.

    Given on the sub-command they default to SUPPRESS so they never overwrite
    a value given before the verb (argparse copies a sub-parser's defaults
    over the main namespace otherwise). ``--app`` is collected in two places
    (``global_app`` before the verb, ``app`` after it) and merged by
    ``_merge_apps``, because its meaning differs per verb: one owner, or a
    repeatable filter.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--addr",
        default=default(None),
        help=f"broker host:port (env CERTBROKER_ADDR, default {DEFAULT_ADDR})",
    )
    parser.add_argument(
        "--tls-ca",
        default=default(None),
        help="CA that issued the broker's certificate (env CERTBROKER_CLIENT_CA)",
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
        "--timeout",
        type=float,
        default=default(None),
        metavar="SECONDS",
        help=f"seconds per call (default {CALL_TIMEOUT_S:g}); with --wait, for the whole wait "
        f"(default {int(wait.DEFAULT_TIMEOUT.total_seconds())})",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print the proto's JSON"
    )
    if suppress:
        parser.add_argument(
            "--app", action="append", default=argparse.SUPPRESS, help=app_help or _OWNER_HELP
        )
    else:
        parser.add_argument(
            "--app",
            action="append",
            dest="global_app",
            default=[],
            help="the app the command acts for, before or after the verb "
            "(like the platform's `scalingo --app NAME`)",
        )


def _wait_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help=f"follow the domain until {what}, printing each change "
        "(exit 0 when a certificate serves, 1 when it needs action, 124 on --timeout)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; exposed so tests and docs can inspect it."""
    parser = argparse.ArgumentParser(
        prog="certbroker",
        description="Manage the TLS certificates of custom domains through a certbroker.",
    )
    parser.add_argument("--version", action="version", version=f"certbroker {_version()}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, app_help: str | None = None) -> argparse.ArgumentParser:
        # "resolve": a verb that declares its own --app (or another global option)
        # replaces the shared one instead of failing at start-up; _merge_apps
        # still merges it with an --app given before the verb.
        p = sub.add_parser(name, help=help_text, description=help_text, conflict_handler="resolve")
        _global_options(p, suppress=True, app_help=app_help)
        return p

    sub.add_parser(
        "serve",
        help="run the broker (configured by CERTBROKER_* environment variables)",
    )

    p = command(
        "domains-add",
        "add a domain to an app (Let's Encrypt unless --no-letsencrypt)",
        app_help="the app the domain belongs to (required)",
    )
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument(
        "--no-letsencrypt",
        action="store_true",
        help="never contact Let's Encrypt for this domain",
    )
    p.add_argument("--cert", type=Path, help="custom certificate (PEM bundle or DER)")
    p.add_argument("--key", type=Path, help="private key of the custom certificate")
    p.add_argument(
        "--key-algorithm",
        choices=sorted(_KEY_ALGORITHMS),
        help="key of the Let's Encrypt certificate (default ecdsa-p256)",
    )
    p.add_argument(
        "--challenge",
        choices=sorted(_CHALLENGES),
        help="how Let's Encrypt validates the domain (default http-01; dns-01 for wildcards, "
        "through a one-time CNAME the status then shows)",
    )
    p.add_argument(
        "--include-apex",
        action="store_true",
        help="for a wildcard (*.example.com): put example.com in the same certificate",
    )
    _wait_options(p, "a certificate serves")

    p = command("domains-ssl", "install (--cert/--key) or remove (--disable) a custom certificate")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--cert", type=Path, help="certificate (PEM bundle or DER)")
    p.add_argument("--key", type=Path, help="private key")
    p.add_argument(
        "--disable",
        action="store_true",
        help="remove the custom certificate; Let's Encrypt serves again",
    )

    p = command(
        "domains-renew",
        "renew the Let's Encrypt certificate now, even if not due (or ask a failing domain's "
        "next attempt now); rationed by the broker like every forced retry",
    )
    p.add_argument("domain", metavar="DOMAIN")
    _wait_options(p, "the renewed certificate serves")

    p = command("domains-remove", "forget a domain and its certificates")
    p.add_argument("domain", metavar="DOMAIN")

    command("domains", "list domains", app_help="only this app's domains")

    p = command(
        "status",
        "show everything about one domain",
        app_help="the app the domain must belong to (an error otherwise)",
    )
    p.add_argument("domain", metavar="DOMAIN")
    _wait_options(p, "a certificate serves")

    command("routers", "list the routers reporting what they serve, and how far behind they are")

    p = command(
        "doctor",
        "run every pre-flight check of a domain now and explain it "
        "(exit 0 when issuance would succeed now, 1 otherwise)",
        app_help="the app that owns, or would own, the domain",
    )
    p.add_argument("domain", metavar="DOMAIN")

    p = command(
        "watch",
        "print changes live, one line each (Ctrl-C stops)",
        app_help="only this app (repeatable)",
    )
    p.add_argument(
        "--since",
        type=int,
        default=0,
        metavar="REV",
        help="changes after this revision (default 0: a snapshot first)",
    )
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
    add_ops_parsers(sub)
    add_migrate_parser(sub)
    return parser


def _merge_apps(args: argparse.Namespace) -> None:
    """One ``args.app`` from ``--app`` before the verb and after it.

    Filters (``watch``, ``router``, ``sync``) get the list of every ``--app``;
    other verbs act for one app, so two different names are a usage error
    rather than a silent choice of one.
    """
    given: list[str] = list(getattr(args, "global_app", []))
    own = getattr(args, "app", None)
    if isinstance(own, list):
        given.extend(own)
    elif isinstance(own, str):
        given.append(own)
    if args.command in _MANY_APPS:
        args.app = given
        return
    distinct = list(dict.fromkeys(given))
    if len(distinct) > 1:
        raise UsageError(f"--app given for several apps ({', '.join(distinct)}): give one")
    args.app = distinct[0] if distinct else None
    if args.command in _NEEDS_APP and args.app is None:
        raise UsageError(f"{args.command} needs --app NAME (before or after the verb)")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as one namespace, whichever side of the verb each option was on.

    Raises ``SystemExit`` (argparse already printed why) or ``UsageError``.
    """
    args = build_parser().parse_args(argv)
    _merge_apps(args)
    timeout: float | None = getattr(args, "timeout", None)
    if timeout is not None and timeout <= 0:
        raise UsageError("--timeout must be more than 0")
    return args


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


def _waiting(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "wait", False))


def _call_timeout(args: argparse.Namespace) -> float:
    """Each RPC's deadline: --timeout, except that a long --wait keeps calls at 30 s."""
    timeout: float | None = args.timeout
    if timeout is None:
        return CALL_TIMEOUT_S
    return min(timeout, CALL_TIMEOUT_S) if _waiting(args) else timeout


def _wait_timeout(args: argparse.Namespace) -> timedelta:
    timeout: float | None = args.timeout
    return wait.DEFAULT_TIMEOUT if timeout is None else timedelta(seconds=timeout)


def _clock() -> datetime:
    return datetime.now(UTC)


class _Output:
    """Where results and errors go; injected so tests can capture both."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err

    def print(self, text: str) -> None:
        # Flushed per line: `watch` and `--wait` are read live through pipes.
        print(text, file=self.out, flush=True)

    def error(self, lines: Sequence[str]) -> None:
        for line in lines:
            print(line, file=self.err, flush=True)


def _show(domain: domain_pb2.Domain, args: argparse.Namespace, io: _Output) -> None:
    io.print(render.to_json(domain) if args.json else render.status_block(domain, now=_clock()))


async def _follow(
    client: BrokerClient,
    domain: domain_pb2.Domain,
    args: argparse.Namespace,
    io: _Output,
    *,
    renewing: bool = False,
) -> int:
    """``--wait``: progress on stdout (stderr with --json, whose stdout is the final JSON)."""

    def emit(line: str) -> None:
        if args.json:
            io.error([line])
        else:
            io.print(line)

    outcome, last = await wait.follow(
        client,
        domain,
        patience=_wait_timeout(args),
        emit=emit,
        clock=_clock,
        renewing=renewing,
    )
    if args.json:
        io.print(render.to_json(last))
    return {
        wait.Outcome.SETTLED: EXIT_OK,
        wait.Outcome.STOPPED: EXIT_STOPPED,
        wait.Outcome.TIMED_OUT: EXIT_TIMEOUT,
    }[outcome]


async def _domains_add(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    custom = _cert_and_key(args)
    domain = await client.issue_certificate(
        args.domain,
        args.app,
        disable_letsencrypt=args.no_letsencrypt,
        key_algorithm=_KEY_ALGORITHMS.get(args.key_algorithm, domain_pb2.KEY_ALGORITHM_UNSPECIFIED),
        challenge_type=_CHALLENGES.get(args.challenge, domain_pb2.CHALLENGE_TYPE_UNSPECIFIED),
        include_apex=args.include_apex,
    )
    if custom is not None:
        try:
            domain = await client.upload_custom(domain.domain, *custom, app=args.app)
        except BrokerError as err:
            io.error(render.error_lines(err))
            io.error([f"note: {domain.domain} was added; its custom certificate was not installed"])
            return EXIT_RPC
    if args.wait:
        return await _follow(client, domain, args, io)
    _show(domain, args, io)
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
    _show(domain, args, io)
    return EXIT_OK


def _needs_issuance(domain: domain_pb2.Domain, now: datetime) -> bool:
    """The broker's own rule, from what GetStatus shows: no certificate yet, or renewal due."""
    if not domain.HasField("lets_encrypt_certificate"):
        return True
    due = render.when(domain.renewal_time)
    expiry = render.when(domain.lets_encrypt_certificate.not_after)
    return (due is not None and due <= now) or (expiry is not None and expiry <= now)


async def _domains_renew(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    """IssueCertificate ``renew`` on a known domain: the broker's quota-safe forced renewal.

    GetStatus first, so a typo never adds a new domain and a domain that opted
    out of Let's Encrypt is said to have nothing to renew (IssueCertificate
    would opt it back in).
    """
    current = await client.get_status(args.domain, app=args.app or "")
    name = current.domain
    if current.disable_letsencrypt:
        io.error([f"error: {name} has Let's Encrypt disabled (--no-letsencrypt): nothing to renew"])
        return EXIT_RPC
    attempt = _needs_issuance(current, _clock())
    domain = await client.issue_certificate(name, args.app or current.app, renew=True)
    if args.wait:
        return await _follow(client, domain, args, io, renewing=True)
    if args.json:
        io.print(render.to_json(domain))
    elif attempt:
        io.print(f"{name}: the next Let's Encrypt attempt runs now")
    else:
        io.print(
            f"{name}: renewing its Let's Encrypt certificate now; the current one serves "
            "until the new one arrives"
        )
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
        io.print(render.domains_table(domains, now=_clock()))
    return EXIT_OK


async def _status(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    domain = await client.get_status(args.domain, app=args.app or "")
    if args.wait:
        return await _follow(client, domain, args, io)
    _show(domain, args, io)
    return EXIT_OK


async def _routers(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    routers = await client.list_routers()
    if args.json:
        io.print(render.to_json(broker_pb2.ListRoutersResponse(routers=routers)))
    else:
        io.print(render.routers_table(routers, now=_clock()))
    return EXIT_OK


async def _doctor(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    report = await client.check_domain(args.domain, app=args.app or "")
    io.print(render.to_json(report) if args.json else render.doctor_report(report))
    return EXIT_OK if report.would_issue_now else EXIT_NOT_READY


async def _watch(client: BrokerClient, args: argparse.Namespace, io: _Output) -> int:
    if args.since < 0:
        raise UsageError("--since must be 0 or more")
    seen = 0
    events = client.watch(args.since, apps=args.app, domains=args.domains, retry_unreached=False)
    async with contextlib.aclosing(events):
        async for event in events:
            line = render.to_json(event, one_line=True) if args.json else render.watch_line(event)
            io.print(line)
            seen += 1
            if args.count and seen >= args.count:
                break
    return EXIT_OK


_HANDLERS: dict[str, Callable[[BrokerClient, argparse.Namespace, _Output], Awaitable[int]]] = {
    "domains-add": _domains_add,
    "domains-ssl": _domains_ssl,
    "domains-renew": _domains_renew,
    "domains-remove": _domains_remove,
    "domains": _domains,
    "status": _status,
    "routers": _routers,
    "doctor": _doctor,
    "watch": _watch,
}


async def _run(args: argparse.Namespace, io: _Output, addr: str, tls: TlsFiles | None) -> int:
    # SIGTERM (e.g. `kill PID` on a running `watch`) cancels the command like
    # Ctrl-C does, so the channel closes cleanly and no traceback is printed.
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with BrokerClient.connect(addr, tls=tls, timeout=_call_timeout(args)) as client:
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
    try:
        args = parse(argv)
    except SystemExit as exc:  # argparse already printed usage and the error (or --version)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except UsageError as exc:
        io.error([f"error: {exc}"])
        return EXIT_USAGE
    if args.command == "router":
        return run_router(args)
    if args.command == "sync":
        return run_sync(args)
    if args.command in OPS_COMMANDS:
        return run_ops(args, io.out, io.err)
    if args.command == "migrate-db":
        return run_migrate(args, io.out, io.err)
    if args.command == "serve":
        try:
            return _serve()
        except UsageError as exc:
            io.error([f"error: {exc}"])
            return EXIT_USAGE
    addr: str = args.addr or os.environ.get("CERTBROKER_ADDR") or DEFAULT_ADDR
    tls: TlsFiles | None = None
    try:
        tls = _tls_from(args)
        return asyncio.run(_run(args, io, addr, tls))
    except UsageError as exc:
        io.error([f"error: {exc}"])
        return EXIT_USAGE
    except BrokerError as exc:
        io.error(render.error_lines(exc, addr=addr, tls=tls))
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
