"""CERTBROKER_DB names the backend: a path or sqlite:PATH, or a postgresql:// URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from certbroker.config import ConfigError, Settings
from certbroker.store.factory import Location, StoreOpenError, open_store, parse, redact
from certbroker.store.postgres import PostgresStore
from certbroker.store.sqlite import SqliteStore
from tests.infra.ports import free_port


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("./var/certbroker.sqlite3", Location("sqlite", "./var/certbroker.sqlite3")),
        ("/data/cb.db", Location("sqlite", "/data/cb.db")),
        ("sqlite:/data/cb.db", Location("sqlite", "/data/cb.db")),
        ("sqlite:relative.db", Location("sqlite", "relative.db")),
        (
            "postgresql://cb@db:5432/certbroker",
            Location("postgresql", "postgresql://cb@db:5432/certbroker"),
        ),
        (
            "postgres://db/cb?sslmode=require",
            Location("postgresql", "postgres://db/cb?sslmode=require"),
        ),
        ("  postgresql:///certbroker  ", Location("postgresql", "postgresql:///certbroker")),
    ],
)
def test_a_location_names_its_backend(raw: str, expected: Location) -> None:
    assert parse(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("mysql://db/cb", "expected a file path, sqlite:PATH or postgresql://"),
        ("postgresql:db/cb", "expected postgresql://"),
        ("postgresql://db:notaport/cb", "bad PostgreSQL URL"),
        ("sqlite:", "expected sqlite:PATH"),
    ],
)
def test_a_bad_location_says_what_is_accepted(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(raw)


def test_the_password_never_shows() -> None:
    assert redact("postgresql://cb:s3cret@db:5432/x") == "postgresql://cb:***@db:5432/x"
    assert redact("postgresql://cb@db/x") == "postgresql://cb@db/x"
    assert redact("postgresql://cb@db/x?sslmode=require&password=s3cret") == (
        "postgresql://cb@db/x?sslmode=require&password=***"
    )
    assert Location("postgresql", "postgresql://u:pw@h/d").describe() == "postgresql://u:***@h/d"


def test_config_accepts_both_and_refuses_others_naming_the_variable() -> None:
    url = "postgresql://cb:pw@db/cb"
    assert Settings.from_env({"CERTBROKER_DB": url}).db == url
    assert Settings.from_env({"CERTBROKER_DB": "sqlite:/d/x.db"}).db == "sqlite:/d/x.db"
    with pytest.raises(ConfigError, match=r"CERTBROKER_DB=.*expected a file path") as error:
        Settings.from_env({"CERTBROKER_DB": "mysql://cb:pw@db/cb"})
    assert "pw" not in str(error.value)


async def test_open_store_opens_the_backend_it_names(tmp_path: Path, postgres_dsn: str) -> None:
    for db, kind in ((f"sqlite:{tmp_path / 'a.db'}", SqliteStore), (postgres_dsn, PostgresStore)):
        store = await open_store(db)
        try:
            assert isinstance(store, kind)
            assert await store.current_revision() == 0
        finally:
            await store.close()


async def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    dsn = f"postgresql://cb:s3cret@127.0.0.1:{free_port()}/cb"
    with pytest.raises(StoreOpenError) as error:
        await open_store(dsn)
    message = str(error.value)
    assert message.startswith("CERTBROKER_DB=postgresql://cb:***@127.0.0.1:")
    assert "cannot open the PostgreSQL database" in message
    assert "s3cret" not in message


async def test_a_missing_database_is_reported(postgres_dsn: str) -> None:
    with pytest.raises(StoreOpenError, match='database "nope_'):
        await open_store(postgres_dsn.rsplit("/", 1)[0] + "/nope_x")


def test_the_started_line_hides_the_password() -> None:
    from certbroker.startup import describe

    settings = Settings(db="postgresql://cb:s3cret@db.internal:5432/cb")
    line = describe(settings, port=1, health_port=None, http01_port=None, kek_id="k")
    assert "DB postgresql://cb:***@db.internal:5432/cb;" in line
    assert "s3cret" not in line


def test_the_ops_verbs_find_either_backend() -> None:
    """backup and rotate-kek take a SQLite file or a PostgreSQL URL; errors hide the password."""
    from certbroker.ops import OpsError
    from certbroker.ops.commands import database_path

    location = database_path(None, {"CERTBROKER_DB": "postgresql://cb:s3cret@db/cb"})
    assert location.backend == "postgresql"
    assert location.describe() == "postgresql://cb:***@db/cb"
    sqlite = database_path("sqlite:/data/x.db")
    assert (sqlite.backend, sqlite.target) == ("sqlite", "/data/x.db")
    with pytest.raises(OpsError, match=r"--db mysql://cb:\*\*\*@db/cb: expected") as caught:
        database_path("mysql://cb:s3cret@db/cb")
    assert "s3cret" not in str(caught.value)
