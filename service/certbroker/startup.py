"""How the broker starts: say what it runs, or fail fast in one line.

Why: under systemd or Docker a process that hangs after a failed start looks
healthy, and a traceback or a gRPC C-core log line hides the one thing the
operator must change. Every start failure becomes ``StartupError`` whose message
begins with the variable to fix (``CERTBROKER_LISTEN=...: ...``); a started
broker logs one line with its effective configuration (never a secret).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

from certbroker.config import LETS_ENCRYPT_PRODUCTION, LETS_ENCRYPT_STAGING, Settings
from certbroker.store.factory import redact

_KNOWN_DIRECTORIES = {
    LETS_ENCRYPT_PRODUCTION: "Let's Encrypt production",
    LETS_ENCRYPT_STAGING: "Let's Encrypt staging",
}
# What gRPC's C core logs when a port cannot be added, e.g.
# "... (Error in bind for address '[::ffff:127.0.0.1]:50051': Address already in use)"
_BIND_CAUSE = re.compile(r"Error in bind for address '[^']*': ([^)\n]+)")


class StartupError(Exception):
    """The broker cannot start; the message says what to fix."""


@contextlib.contextmanager
def _captured_fd2() -> Iterator[Callable[[], str]]:
    """Send file descriptor 2 to a temporary file for the duration (C code writes there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)

        def text() -> str:
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def bind(variable: str, address: str, add_port: Callable[[], int]) -> int:
    """Run a gRPC ``add_*_port``; a failure is a ``StartupError`` naming ``variable``.

    gRPC raises only "Failed to bind to address" and logs the cause (address in
    use, permission denied) as a C-core line on stderr. That line is captured and
    its cause put in our one-line message; on success anything captured is
    written back to stderr unchanged.
    """
    with _captured_fd2() as captured:
        try:
            port = add_port()
        except RuntimeError:
            port = -1
        logged = captured()
    if port > 0:
        if logged:
            sys.stderr.write(logged)
        return port
    match = _BIND_CAUSE.search(logged)
    cause = match.group(1).strip().lower() if match else "gRPC could not listen there"
    raise StartupError(
        f"{variable}={address}: cannot listen: {cause}; choose another address or stop what "
        "holds it"
    )


def describe(
    settings: Settings,
    *,
    port: int,
    health_port: int | None,
    http01_port: int | None,
    kek_id: str,
    broker_id: str | None = None,
) -> str:
    """The effective configuration in one line (addresses with the ports actually bound).

    ``broker_id``: this broker's name among several sharing the database (None: alone).
    """
    s = settings
    if s.tls_enabled:
        tls = f"mTLS, {len(s.roles)} client roles" if s.roles else "mTLS"
    else:
        tls = "plaintext"
    acme = "off (custom certificates only)"
    if s.acme_directory:
        name = _KNOWN_DIRECTORIES.get(s.acme_directory)
        acme = f"{s.acme_directory} ({name})" if name else s.acme_directory
    health = "off" if s.health_listen is None else _address(s.health_listen[0], health_port)
    http01 = "off" if s.http01_listen is None else _address(s.http01_listen[0], http01_port)
    dns01 = "off"
    if s.dns01_zone and s.dns01_server:
        dns01 = f"zone {s.dns01_zone} via {_address(*s.dns01_server)}"
    elif s.dns01_server:
        dns01 = f"platform zones only via {_address(*s.dns01_server)}"
    parts = [
        f"gRPC {_host(s.listen)}:{port} ({tls})",
        f"health {health}",
        f"HTTP-01 {http01}",
        f"ACME {acme}",
        f"platform targets {', '.join(s.platform_targets) or 'none'}",
        f"DNS-01 {dns01}",
    ]
    if s.platform_domains:
        zone = f" in zone {s.platform_zone}" if s.platform_zone else ""
        parts.append(f"platform domains {', '.join(s.platform_domains)}{zone}")
    parts += [
        f"DB {redact(s.db)}",  # a PostgreSQL URL may carry a password
        *([f"broker id {broker_id} (lease {s.lease.total_seconds():g}s)"] if broker_id else []),
        f"KEK id {kek_id}",
        f"trust roots {s.trust_bundle or 'system'}",
    ]
    return "certbroker started: " + "; ".join(parts)


def _host(listen: str) -> str:
    host, _, _ = listen.rpartition(":")
    return host


def _address(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
