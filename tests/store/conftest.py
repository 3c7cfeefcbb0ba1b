from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.store.backends import AnyStore, Backend, PostgresBackend, SqliteBackend


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each contract test runs once per backend, on a database of its own."""
    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "nested" / "broker.sqlite3")
    return PostgresBackend(request.getfixturevalue("postgres_dsn"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[AnyStore]:
    s = await backend.open()
    try:
        yield s
    finally:
        await s.close()
