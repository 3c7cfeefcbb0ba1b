"""Fixtures every test package may use: the session's throwaway PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.infra.postgres import Postgres, create_database, drop_database


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One PostgreSQL for the whole session, started on first use (initdb costs seconds)."""
    with Postgres.running() as server:
        yield server


@pytest.fixture
async def postgres_dsn(postgres_server: Postgres) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped after it."""
    dsn = await create_database(postgres_server)
    try:
        yield dsn
    finally:
        await drop_database(postgres_server, dsn)
