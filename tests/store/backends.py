"""The two store backends behind one face, for the contract suite (tests/store/test_contract.py).

Each opens its store the way the broker does and reads what the database really
holds through a separate, plain connection. SQL is written once with ``?``
placeholders; the PostgreSQL side numbers them.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from certbroker.store.postgres import PostgresStore
from certbroker.store.sqlite import SqliteStore

AnyStore = SqliteStore | PostgresStore


class Backend(Protocol):
    name: str

    async def open(self, **options: Any) -> AnyStore:
        """A store on this backend's database (the same one at every call)."""
        ...

    async def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """What a separate, plain connection reads: the committed truth."""
        ...

    async def execute(self, sql: str, *params: object) -> None:
        """Change the database behind the store's back (as an older version would have)."""
        ...


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def open(self, **options: Any) -> AnyStore:
        return await SqliteStore.open(str(self.path), **options)

    async def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    async def execute(self, sql: str, *params: object) -> None:
        conn = sqlite3.connect(self.path)
        try:
            with conn:
                conn.execute(sql, params)
        finally:
            conn.close()


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2``, ..."""
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


class PostgresBackend:
    name = "postgres"

    def __init__(self, dsn: str, poll_interval: float = 0.5) -> None:
        self.dsn = dsn
        self.poll_interval = poll_interval

    async def open(self, **options: Any) -> AnyStore:
        options.setdefault("poll_interval", self.poll_interval)
        return await PostgresStore.open(self.dsn, **options)

    async def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return [tuple(r) for r in await conn.fetch(numbered(sql), *params)]
        finally:
            await conn.close()

    async def execute(self, sql: str, *params: object) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(numbered(sql), *params)
        finally:
            await conn.close()
