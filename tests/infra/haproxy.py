"""HAProxy (Debian's ``haproxy`` 2.6) on free loopback ports, configured as the README says.

The configuration is the one a platform runs beside ``certbroker sync haproxy``:
an admin socket, an HTTPS frontend binding a crt-list that starts with a
default certificate, and an HTTP frontend forwarding HTTP-01 challenges to the
broker's responder (Pebble validates through it). The HTTPS frontend answers
every request itself with a small page, enough for a browser to load.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.infra.ports import free_port, wait_tcp
from tests.infra.process import ServerProcess

BINARY = shutil.which("haproxy") or "/usr/sbin/haproxy"
PAGE_MARKER = "certbroker-test-page"
PAGE = f"<html><head><title>shop</title></head><body><p id='{PAGE_MARKER}'>ok</p></body></html>"

CONFIG = """\
global
    stats socket {socket} mode 600 level admin
    log stderr format raw local0 warning

defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend https
    bind 127.0.0.1:{https_port} ssl crt-list {crt_list} alpn h2,http/1.1
    http-request return status 200 content-type text/html string "{page}"

frontend http
    bind 127.0.0.1:{http_port}
    acl acme_challenge path_beg /.well-known/acme-challenge/
    http-request redirect scheme https code 308 unless acme_challenge
    use_backend certbroker_http01 if acme_challenge

backend certbroker_http01
    server broker 127.0.0.1:{http01_port}
"""


class HAProxyError(RuntimeError):
    """HAProxy did not start."""


class HAProxy(ServerProcess):
    """One HAProxy process in the foreground (``-db``), so its PID is the one serving."""

    def __init__(
        self,
        *,
        default_pem: bytes,
        http01_port: int,
        http_port: int | None = None,
        workdir: Path | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        """``default_pem``: chain and key served to unknown names (the crt-list's first line)."""
        self.default_pem = default_pem
        self.http01_port = http01_port
        self.http_port = http_port or free_port()
        self.https_port = 0
        self._workdir = workdir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._start_timeout = start_timeout

    @property
    def dir(self) -> Path:
        if self._workdir is not None:
            return self._workdir
        if self._tmp is None:
            raise HAProxyError("not started")
        return Path(self._tmp.name)

    @property
    def socket_path(self) -> Path:
        return self.dir / "admin.sock"

    @property
    def crt_list(self) -> Path:
        return self.dir / "crt-list.txt"

    @property
    def log_path(self) -> Path:
        return self.dir / "haproxy.log"

    def start(self) -> HAProxy:
        if self._workdir is None and self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="haproxy-")
        self.dir.mkdir(parents=True, exist_ok=True)
        default = self.dir / "default.pem"
        default.write_bytes(self.default_pem)
        default.chmod(0o600)
        self.crt_list.write_text(f"{default}\n")
        last = ""
        for _ in range(3):
            self.https_port = self.https_port or free_port()
            config = self.dir / "haproxy.cfg"
            config.write_text(
                CONFIG.format(
                    socket=self.socket_path,
                    https_port=self.https_port,
                    http_port=self.http_port,
                    http01_port=self.http01_port,
                    crt_list=self.crt_list,
                    page=PAGE,
                )
            )
            if self._launch(config):
                return self
            last = self.log_text()
            self._kill()
            self.https_port = 0
        self._cleanup()
        raise HAProxyError(f"haproxy did not start:\n{last}")

    def _launch(self, config: Path) -> bool:
        self.socket_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [BINARY, "-f", str(config), "-db"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if wait_tcp("127.0.0.1", self.https_port) and self.socket_path.exists():
                return True
            time.sleep(0.02)
        return False

    def restart(self) -> None:
        """Stop and start again on the same ports: runtime changes are lost, as in production."""
        self._kill()
        self.start()

    def command(self, line: str) -> str:
        """One runtime API command (blocking), HAProxy's answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(str(self.socket_path))
            conn.sendall(line.encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
