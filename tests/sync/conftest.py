"""Fixtures for the sync agent tests, each per module: the lab, a proxy, the agent beside it.

Module scope, so one Pebble and one broker serve a whole test file; the DNS
server Pebble resolves through is shared by the session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.haproxy import HAProxy
from tests.infra.nginx import Nginx
from tests.sync.support import DEFAULT_PEM, PREFIX, SyncAgent, SyncLab, sync_lab


@pytest.fixture(scope="session")
def sync_dns() -> Iterator[ChallTestSrv]:
    with ChallTestSrv.running(default_ipv4="127.0.0.1") as server:
        yield server


@pytest.fixture(scope="module")
async def lab(
    tmp_path_factory: pytest.TempPathFactory, sync_dns: ChallTestSrv
) -> AsyncIterator[SyncLab]:
    async with sync_lab(tmp_path_factory.mktemp("sync"), sync_dns) as running:
        yield running


@pytest.fixture(scope="module")
def haproxy(lab: SyncLab) -> Iterator[HAProxy]:
    """HAProxy whose HTTP frontend is where Pebble validates HTTP-01."""
    with HAProxy.running(
        default_pem=DEFAULT_PEM, http01_port=lab.http01_port, http_port=lab.http_port
    ) as server:
        yield server


@pytest.fixture(scope="module")
def haproxy_agent(lab: SyncLab, haproxy: HAProxy) -> Iterator[SyncAgent]:
    args = ["--socket", str(haproxy.socket_path), "--crt-list", str(haproxy.crt_list)]
    args += ["--prefix", PREFIX]
    with SyncAgent.running(
        target="haproxy", lab=lab, args=args, log_path=lab.workdir / "haproxy-agent.log"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def certs(lab: SyncLab) -> Path:
    """The directory nginx loads from (tmpfs in production)."""
    folder = lab.workdir / "certs"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def nginx(lab: SyncLab, certs: Path) -> Iterator[Nginx]:
    """nginx whose HTTP server is where Pebble validates HTTP-01."""
    with Nginx.running(certs=certs, http01_port=lab.http01_port, http_port=lab.http_port) as server:
        yield server


@pytest.fixture(scope="module")
def nginx_agent(lab: SyncLab, nginx: Nginx, certs: Path) -> Iterator[SyncAgent]:
    args = ["--dir", str(certs), "--map-file", str(nginx.map_file)]
    args += ["--reload-command", nginx.reload_command]
    with SyncAgent.running(
        target="nginx", lab=lab, args=args, log_path=lab.workdir / "nginx-agent.log"
    ) as running:
        yield running
