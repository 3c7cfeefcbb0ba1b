"""Fixtures for the sync agent tests: one DNS server per session (Pebble resolves through it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra.challtestsrv import ChallTestSrv


@pytest.fixture(scope="session")
def sync_dns() -> Iterator[ChallTestSrv]:
    with ChallTestSrv.running(default_ipv4="127.0.0.1") as server:
        yield server
