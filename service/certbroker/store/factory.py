"""Which store ``CERTBROKER_DB`` names, and opening it: one place that knows both backends.

- a path, or ``sqlite:PATH``: the embedded SQLite default (one broker);
- ``postgresql://…`` (or ``postgres://…``, libpq's URI form; TLS and the like go
  in its query string, e.g. ``?sslmode=verify-full``): PostgreSQL, which several
  brokers may share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from certbroker.store.base import Store

POSTGRES_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*")


class StoreOpenError(Exception):
    """The database cannot be reached or opened; the message says which (password hidden)."""


@dataclass(frozen=True)
class Location:
    backend: Literal["sqlite", "postgresql"]
    target: str  # the file path, or the DSN as given

    def describe(self) -> str:
        """For logs and errors: the DSN without its password."""
        return self.target if self.backend == "sqlite" else redact(self.target)


def redact(dsn: str) -> str:
    """The DSN without its password, in the user part or a ``password=`` query parameter."""
    parts = urlsplit(dsn)
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    if parts.password is None:
        return urlunsplit(parts._replace(query=query)) if query != parts.query else dsn
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}:***@{host}" if parts.username else f":***@{host}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def parse(raw: str) -> Location:
    """``raw`` as a location; ``ValueError`` (saying what is accepted) when it is neither."""
    text = raw.strip()
    match = _SCHEME.match(text)
    scheme = match.group(1).lower() if match else ""
    if scheme in POSTGRES_SCHEMES:
        if not text[len(scheme) + 1 :].startswith("//"):
            raise ValueError("expected postgresql://[user[:password]@][host][:port]/database")
        try:
            urlsplit(text).port  # noqa: B018 (parses the port, raising on a bad one)
        except ValueError as error:
            raise ValueError(f"bad PostgreSQL URL: {error}") from None
        return Location("postgresql", text)
    if scheme == "sqlite":
        path = text[len("sqlite:") :]
        if not path:
            raise ValueError("expected sqlite:PATH")
        return Location("sqlite", path)
    if scheme and len(scheme) > 1 and text[len(scheme) + 1 :].startswith("//"):
        # "mysql://..." is a mistake, not a file name; (a one-letter scheme is a drive)
        raise ValueError("expected a file path, sqlite:PATH or postgresql://…")
    return Location("sqlite", text)


async def open_store(db: str) -> Store:
    """Open (and migrate) the store ``db`` names.

    Raises ``StoreOpenError`` when PostgreSQL cannot be reached or refuses us, so
    the start fails with one line instead of a driver's traceback.
    """
    location = parse(db)
    if location.backend == "sqlite":
        from certbroker.store.sqlite import SqliteStore

        return await SqliteStore.open(location.target)
    import asyncpg  # only here: parsing a location must not load the driver

    from certbroker.store.postgres import PostgresStore

    try:
        return await PostgresStore.open(location.target)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise StoreOpenError(
            f"CERTBROKER_DB={location.describe()}: cannot open the PostgreSQL database: {detail}"
        ) from None
