from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra.bind import Bind
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble
from tests.infra.ports import free_port
from tests.integration.lab import NINETY_DAYS, Lab


@pytest.fixture(scope="session")
def dns_server() -> Iterator[ChallTestSrv]:
    with ChallTestSrv.running(default_ipv4="127.0.0.1") as dns:
        yield dns


@pytest.fixture(scope="session")
def lab(dns_server: ChallTestSrv) -> Iterator[Lab]:
    """Pebble issuing 90-day certificates, validating HTTP-01 on the broker's responder port."""
    http01_port = free_port()
    with Pebble.running(
        http_port=http01_port,
        dns_server=dns_server.dns_address,
        nonce_reject_percent=0,
        authz_reuse_percent=0,
        validity_seconds=NINETY_DAYS,
    ) as pebble:
        yield Lab(dns=dns_server, pebble=pebble, http01_port=http01_port)


@pytest.fixture(scope="module")
def bind() -> Iterator[Bind]:
    """BIND: the customer zone, the broker's challenge zone (tests/integration/dns01.py)."""
    with Bind.running() as server:
        yield server


@pytest.fixture(scope="module")
def pebble(bind: Bind) -> Iterator[Pebble]:
    """Pebble resolving through BIND; every order validates (no authorization reuse)."""
    with Pebble.running(
        http_port=free_port(),  # nothing answers HTTP-01 here: DNS-01 or nothing
        dns_server=bind.address,
        nonce_reject_percent=0,
        authz_reuse_percent=0,
        validity_seconds=NINETY_DAYS,
    ) as p:
        yield p


@pytest.fixture
def failing_ca(lab: Lab) -> Iterator[Pebble]:
    """A CA whose validations always fail: its HTTP-01 port has nothing behind it."""
    with Pebble.running(
        http_port=free_port(),
        dns_server=lab.dns.dns_address,
        nonce_reject_percent=0,
        authz_reuse_percent=0,
    ) as pebble:
        yield pebble
