"""``pebble-challtestsrv`` as a mock DNS server for tests.

Only the DNS listener (UDP and TCP on one loopback port) and the management
API are started; the HTTP-01/HTTPS-01/TLS-ALPN-01 listeners are disabled
(``""``) so they take no ports. By default every A query answers
``127.0.0.1`` and AAAA queries answer nothing (``-defaultIPv6 ""``), so no
stray IPv6 address surprises a test unless it asks for one.

Management calls are small synchronous HTTP POSTs to loopback (about a
millisecond); calling them from an async test is fine.

Usage::

    with ChallTestSrv.running() as dns:
        dns.add_a("www.example.test", ["127.0.0.2"])
        ... resolve through 127.0.0.1:dns.dns_port ...
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.infra.ports import free_port, wait_tcp
from tests.infra.process import ServerProcess

BINARY = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


class ChallTestSrvError(RuntimeError):
    """The server did not start or a management call failed."""


class ChallTestSrv(ServerProcess):
    """One ``pebble-challtestsrv`` process on free loopback ports.

    The constructor has no side effects; ``start()`` launches the process and
    returns once both the DNS (TCP) and management ports accept connections.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        default_ipv4: str = "127.0.0.1",
        default_ipv6: str = "",
        start_timeout: float = 10.0,
    ) -> None:
        self._default_ipv4 = default_ipv4
        self._default_ipv6 = default_ipv6
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self.dns_port = 0
        self.mgmt_port = 0

    # -- lifecycle -----------------------------------------------------------

    @property
    def mgmt_url(self) -> str:
        return f"http://{self.host}:{self.mgmt_port}"

    @property
    def dns_address(self) -> str:
        """``host:port`` as Pebble's ``-dnsserver`` flag wants it."""
        return f"{self.host}:{self.dns_port}"

    @property
    def log_path(self) -> Path:
        assert self._log_dir is not None
        return Path(self._log_dir.name) / "challtestsrv.log"

    def start(self) -> ChallTestSrv:
        """Start the process; retry on fresh ports if a port was taken meanwhile."""
        if self._proc is not None:
            raise ChallTestSrvError("already started")
        self._log_dir = tempfile.TemporaryDirectory(prefix="challtestsrv-")
        last = ""
        for _ in range(3):
            self.dns_port = free_port(self.host, udp_too=True)
            self.mgmt_port = free_port(self.host)
            if self._launch():
                return self
            last = self.log_text()
            self._kill()
        self._cleanup()
        raise ChallTestSrvError(f"pebble-challtestsrv did not start:\n{last}")

    def _launch(self) -> bool:
        args = [
            BINARY,
            "-dns01", f"{self.host}:{self.dns_port}",
            "-management", f"{self.host}:{self.mgmt_port}",
            "-http01", "",
            "-https01", "",
            "-tlsalpn01", "",
            "-defaultIPv4", self._default_ipv4,
            "-defaultIPv6", self._default_ipv6,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if wait_tcp(self.host, self.mgmt_port) and wait_tcp(self.host, self.dns_port):
                return True
            time.sleep(0.02)
        return False

    def _cleanup(self) -> None:
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None

    # -- management API ------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> None:
        if "host" in body:
            # The TXT handlers store the name verbatim and answer only for the
            # fully-qualified form; the other handlers qualify it themselves.
            body = {**body, "host": _fqdn(body["host"])}
        data = json.dumps(body).encode()
        req = urllib.request.Request(
            self.mgmt_url + path,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
        except OSError as e:
            raise ChallTestSrvError(f"POST {path} {body!r} failed: {e}") from e

    def add_a(self, host: str, ips: list[str]) -> None:
        self._post("/add-a", {"host": host, "addresses": ips})

    def clear_a(self, host: str) -> None:
        self._post("/clear-a", {"host": host})

    def add_aaaa(self, host: str, ips: list[str]) -> None:
        self._post("/add-aaaa", {"host": host, "addresses": ips})

    def clear_aaaa(self, host: str) -> None:
        self._post("/clear-aaaa", {"host": host})

    def set_cname(self, host: str, target: str) -> None:
        self._post("/set-cname", {"host": host, "target": target})

    def clear_cname(self, host: str) -> None:
        self._post("/clear-cname", {"host": host})

    def add_caa(self, host: str, policies: list[tuple[str, str]] | list[dict[str, str]]) -> None:
        """Add CAA records; each policy is ``(tag, value)`` or ``{"tag":..., "value":...}``.

        challtestsrv has no flags field: every record is sent with flags 0.
        """
        items = [p if isinstance(p, dict) else {"tag": p[0], "value": p[1]} for p in policies]
        self._post("/add-caa", {"host": host, "policies": items})

    def clear_caa(self, host: str) -> None:
        self._post("/clear-caa", {"host": host})

    def set_txt(self, host: str, value: str) -> None:
        """Add a TXT value for ``host`` (``_acme-challenge.x.`` style; repeated calls add more)."""
        self._post("/set-txt", {"host": host, "value": value})

    def clear_txt(self, host: str) -> None:
        self._post("/clear-txt", {"host": host})

    def set_servfail(self, host: str) -> None:
        self._post("/set-servfail", {"host": host})

    def clear_servfail(self, host: str) -> None:
        self._post("/clear-servfail", {"host": host})

    def set_default_ipv4(self, ip: str) -> None:
        """Change the A answer for names without their own record (``""`` disables it)."""
        self._post("/set-default-ipv4", {"ip": ip})

    def set_default_ipv6(self, ip: str) -> None:
        self._post("/set-default-ipv6", {"ip": ip})
