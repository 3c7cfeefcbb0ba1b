"""``certbroker backup`` on PostgreSQL: pg_dump of one snapshot, restored into a fresh database.

Through the real CLI while a broker serves; the README's restore recipe
(``pg_restore --no-owner --exit-on-error``) into a new database; a broker on it
with the same KEK serves the same domains and keys.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2
from tests.broker import started_broker
from tests.infra.postgres import BIN, Postgres, create_database, drop_database
from tests.ops.pg_support import CERTS, assert_serves_the_keys, open_all, populated
from tests.ops.support import certbroker
from tests.pki import NOW

NAMES = [f"c{i}.example.com" for i in range(CERTS)]


async def test_backup_then_restore_into_a_fresh_database_serves_the_same_domains(
    tmp_path: Path, postgres_dsn: str, postgres_server: Postgres
) -> None:
    settings, old, plain = await populated(tmp_path, postgres_dsn)
    dest = tmp_path / "backups" / "cb.dump"
    dest.parent.mkdir()
    env = {"CERTBROKER_DB": postgres_dsn}
    async with started_broker(settings, FakeClock(NOW)):  # safe while a broker serves
        made = await certbroker("backup", str(dest), env=env)
    assert made.code == 0, made.err
    assert f"{CERTS} domains, {CERTS} certificates" in made.out
    assert f"KEK ids it needs: {old.key_id};" in made.out
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert [p.name for p in dest.parent.iterdir()] == ["cb.dump"]  # no temporary left
    again = await certbroker("backup", str(dest), env=env)
    assert again.code == 1 and "already exists; pass --force" in again.err

    fresh = await create_database(postgres_server, "restored")
    try:
        restored = subprocess.run(
            [
                str(BIN / "pg_restore"),
                "--no-owner",
                "--exit-on-error",
                f"--dbname={fresh}",
                str(dest),
            ],
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert restored.returncode == 0, restored.stderr
        assert await open_all(fresh, old) == plain  # every sealed secret, same KEK
        restored_settings = replace(settings, db=fresh)
        async with started_broker(restored_settings, FakeClock(NOW)) as broker:
            page = await broker.stub.ListDomains(broker_pb2.ListDomainsRequest())
            assert sorted(d.domain for d in page.domains) == NAMES
        await assert_serves_the_keys(restored_settings, NAMES)
    finally:
        await drop_database(postgres_server, fresh)


async def test_bad_input_is_refused_precisely(tmp_path: Path, postgres_dsn: str) -> None:
    await populated(tmp_path, postgres_dsn)
    env = {"CERTBROKER_DB": postgres_dsn}
    missing = await certbroker(
        "backup", str(tmp_path / "a.dump"), "--pg-dump", "/nonexistent/pg_dump", env=env
    )
    assert missing.code == 1
    assert "--pg-dump /nonexistent/pg_dump: not found; install the PostgreSQL" in missing.err
    unreachable = await certbroker(
        "backup",
        str(tmp_path / "b.dump"),
        env={"CERTBROKER_DB": "postgresql://cb:s3cret@127.0.0.1:1/cb"},
    )
    assert unreachable.code == 1
    assert "CERTBROKER_DB=postgresql://cb:***@127.0.0.1:1/cb: cannot connect" in unreachable.err
    assert "s3cret" not in unreachable.err
    folder = await certbroker("backup", str(tmp_path), env=env)
    assert folder.code == 1 and "is a directory" in folder.err
    # pg_dump's own failure (here: a server newer than it, stood in for by a failing tool)
    fake = tmp_path / "pg_dump"
    fake.write_text(
        "#!/bin/sh\necho 'pg_dump: error: aborting because of server version mismatch' >&2\n"
        "exit 1\n"
    )
    fake.chmod(0o700)
    failed = await certbroker("backup", str(tmp_path / "c.dump"), "--pg-dump", str(fake), env=env)
    assert failed.code == 1
    assert "pg_dump failed (exit 1): pg_dump: error: aborting because of server" in failed.err
    assert not os.path.exists(tmp_path / "c.dump")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".certbroker-backup-")]


async def test_pg_dump_gets_the_decoded_password_and_never_on_its_command_line(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A password with URL-reserved characters is percent-encoded in CERTBROKER_DB (as
    libpq and asyncpg require): pg_dump must get it decoded (libpq does not decode
    PGPASSWORD), and one given as ``?password=`` must not reach its argv or our errors."""
    await populated(tmp_path, postgres_dsn)
    seen = tmp_path / "seen"
    fake = tmp_path / "pg_dump"
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$PGPASSWORD" "$@" > {seen}\n'
        "echo 'pg_dump: error: stop here' >&2\nexit 1\n"
    )
    fake.chmod(0o700)
    user, _, rest = postgres_dsn.removeprefix("postgresql://").partition("@")
    encoded = f"postgresql://{user}:p%40ss%3Aw%2Frd@{rest}"  # the password: p@ss:w/rd
    failed = await certbroker(
        "backup", str(tmp_path / "a.dump"), "--pg-dump", str(fake), env={"CERTBROKER_DB": encoded}
    )
    assert failed.code == 1 and "pg_dump failed (exit 1)" in failed.err, failed.err
    password, *argv = seen.read_text().splitlines()
    assert password == "p@ss:w/rd"
    assert not [a for a in argv if "p%40ss" in a or "p@ss" in a]

    in_query = f"{postgres_dsn}?password=qu3ry-s3cret"
    failed = await certbroker(
        "backup", str(tmp_path / "b.dump"), "--pg-dump", str(fake), env={"CERTBROKER_DB": in_query}
    )
    assert failed.code == 1 and "pg_dump failed (exit 1)" in failed.err, failed.err
    password, *argv = seen.read_text().splitlines()
    assert password == "qu3ry-s3cret"
    assert not [a for a in argv if "qu3ry-s3cret" in a]
    assert "qu3ry-s3cret" not in failed.err
