"""Real proxies fed by sync agents, for the benches: HAProxy or nginx, each with its agent.

Each "router" here is one proxy process (the tests' HAProxy or nginx set-up:
tests/infra/haproxy.py, tests/infra/nginx.py) and one ``certbroker sync``
agent process beside it, following the broker as ``router-1``. Everything is
stopped by PID when the block ends, even after a failure.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.infra.haproxy import HAProxy
from tests.infra.nginx import Nginx
from tests.infra.ports import free_port
from tests.infra.process import ServerProcess
from tests.pki import TestPKI

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("haproxy", "nginx")


def _default_pem() -> bytes:
    pki = TestPKI("Bench Default", key_slot=6)
    now = datetime.now(UTC)
    leaf = pki.leaf(
        "default.invalid", not_before=now - timedelta(days=1), not_after=now + timedelta(days=30)
    )
    return pki.bundle(leaf) + leaf.key_pem()


def _wait_for_snapshot(agent: subprocess.Popen[bytes], log: Path, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise RuntimeError(f"the sync agent exited:\n{log.read_text(errors='replace')}")
        if "snapshot at revision" in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the sync agent applied no snapshot:\n{log.read_text(errors='replace')}")


def _stop(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(5)


@contextlib.contextmanager
def proxy_routers(
    target: str, count: int, addr: str, tls: tuple[Path, Path, Path]
) -> Iterator[list[int]]:
    """Start ``count`` proxy + agent pairs; yields the proxies' HTTPS ports once all are synced.

    ``tls`` is (broker CA, router certificate, router key).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown proxy target {target!r}")
    ca, cert, key = tls
    with contextlib.ExitStack() as stack:
        # On tmpfs where there is one, as the README asks for nginx's directory: the
        # figure is then the agent's and nginx's, not this machine's disk fsync.
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
        work = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{target}-", dir=shm))
        )
        ports: list[int] = []
        for index in range(count):
            proxy: ServerProcess
            closed = free_port()  # HTTP-01 goes nowhere: bench names skip Let's Encrypt
            if target == "haproxy":
                haproxy = HAProxy(default_pem=_default_pem(), http01_port=closed)
                stack.enter_context(haproxy)
                flags = ["--socket", str(haproxy.socket_path), "--crt-list", str(haproxy.crt_list)]
                proxy, port = haproxy, haproxy.https_port
            else:
                certs = work / f"certs-{index}"
                certs.mkdir()
                nginx = Nginx(certs=certs, http01_port=closed)
                stack.enter_context(nginx)
                flags = ["--dir", str(certs), "--map-file", str(nginx.map_file)]
                proxy, port = nginx, nginx.https_port
            log = work / f"agent-{index}.log"
            with log.open("wb") as out:
                agent = subprocess.Popen(
                    [
                        sys.executable, "-m", "certbroker_client.cli", "sync", target,
                        "--addr", addr, "--tls-ca", str(ca), "--tls-cert", str(cert),
                        "--tls-key", str(key), "--router-id", f"bench-{target}-{index}", *flags,
                    ],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                )  # fmt: skip
            stack.callback(_stop, agent)
            _wait_for_snapshot(agent, log, 60)
            assert proxy.pid is not None
            ports.append(port)
        yield ports
