"""nginx (Debian's ``nginx-light`` 1.22) on free loopback ports, configured as the README says.

HTTPS loads ``<certs>/<name>.pem`` per handshake through a ``map`` of
``$ssl_server_name`` (the shape ``certbroker sync nginx`` documents: a strict
catch-all regex plus the agent's wildcard fragment); HTTP forwards HTTP-01
challenges to the broker's responder. The master stays in the foreground, so
the PID the test holds is the master's; its workers are its children.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.infra.ports import free_port, wait_tcp
from tests.infra.process import ServerProcess

BINARY = shutil.which("nginx") or "/usr/sbin/nginx"
PAGE_MARKER = "certbroker-test-page"

CONFIG = r"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    map $ssl_server_name $certbroker_name {{
        default invalid;
        include {map_file};
        "~^(?<certbroker_sni>[a-z0-9-]+(\.[a-z0-9-]+)+)$" $certbroker_sni;
    }}

    server {{
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate     {certs}/$certbroker_name.pem;
        ssl_certificate_key {certs}/$certbroker_name.pem;
        default_type text/html;
        return 200 "<html><body><p id='{marker}'>{marker}</p></body></html>";
    }}

    server {{
        listen 127.0.0.1:{http_port};
        location /.well-known/acme-challenge/ {{
            proxy_pass http://127.0.0.1:{http01_port};
        }}
        location / {{
            return 308 https://$host$request_uri;
        }}
    }}
}}
"""


class NginxError(RuntimeError):
    """nginx did not start."""


class Nginx(ServerProcess):
    """One nginx master (foreground) with one worker."""

    def __init__(
        self,
        *,
        certs: Path,
        http01_port: int,
        http_port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        """``certs``: the directory the agent writes; ``map_file`` is the wildcard fragment."""
        self.certs = certs
        self.http01_port = http01_port
        self.http_port = http_port or free_port()
        self.https_port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._start_timeout = start_timeout

    @property
    def dir(self) -> Path:
        if self._tmp is None:
            raise NginxError("not started")
        return Path(self._tmp.name)

    @property
    def map_file(self) -> Path:
        return self.dir / "certbroker-wildcards.map"

    @property
    def config_path(self) -> Path:
        return self.dir / "nginx.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "error.log"

    @property
    def reload_command(self) -> str:
        """What the agent runs after changing the map fragment."""
        return shlex.join(
            [
                BINARY,
                "-c",
                str(self.config_path),
                "-p",
                str(self.dir),
                "-e",
                str(self.log_path),
                "-s",
                "reload",
            ]
        )

    def start(self) -> Nginx:
        self._tmp = tempfile.TemporaryDirectory(prefix="nginx-")
        (self.dir / "tmp").mkdir()
        self.map_file.write_text("")
        # As root the master drops its workers to `nobody`, who could not read the
        # agent's 0600 files; keep them root here (in production: --group).
        user = "user root;" if os.geteuid() == 0 else ""
        last = ""
        for _ in range(3):
            self.https_port = free_port()
            self.config_path.write_text(
                CONFIG.format(
                    user=user,
                    dir=self.dir,
                    map_file=self.map_file,
                    certs=self.certs,
                    https_port=self.https_port,
                    http_port=self.http_port,
                    http01_port=self.http01_port,
                    marker=PAGE_MARKER,
                )
            )
            if self._launch():
                return self
            last = self.log_text()
            self._kill()
        self._cleanup()
        raise NginxError(f"nginx did not start:\n{last}")

    def _launch(self) -> bool:
        self._proc = subprocess.Popen(
            [BINARY, "-c", str(self.config_path), "-p", str(self.dir), "-e", str(self.log_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if wait_tcp("127.0.0.1", self.https_port) and wait_tcp("127.0.0.1", self.http_port):
                return True
            time.sleep(0.02)
        return False

    def worker_pids(self) -> set[int]:
        """The master's children right now (the workers)."""
        master = self.pid
        found: set[int] = set()
        if master is None:
            return found
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == master:
                found.add(int(entry.name))
        return found

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
