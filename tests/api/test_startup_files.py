"""The files the broker keeps secrets in, as a started broker leaves them.

The database (sealed keys, the KEK canary) and its -wal/-shm files are 0600
whatever the umask; a KEK file open to group or others stops the start with the
``chmod`` to run, before anything listens.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from certbroker import server
from certbroker.server import StartupError, run
from certbroker.v1 import broker_pb2
from certbroker.x509.sealing import KeySealer
from tests.broker import broker_settings, started_broker


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The files must be private on their own, not because the umask happens to be strict."""
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
async def test_database_wal_shm_and_a_new_kek_are_private_after_start(tmp_path: Path) -> None:
    settings = broker_settings(
        tmp_path,
        db=str(tmp_path / "data" / "broker.sqlite3"),
        kek_file=str(tmp_path / "secrets" / "kek"),
    )
    async with started_broker(settings) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="files.example.com", app="shop", disable_letsencrypt=True
            )
        )
        db = Path(settings.db)
        files = {p.name: mode(p) for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"))}
        assert files == {name: 0o600 for name in files}
    assert mode(Path(settings.kek_file)) == 0o600
    assert mode(Path(settings.kek_file).parent) == 0o700  # created by the broker: not listable
    assert mode(db.parent) == 0o700


@pytest.mark.parametrize("kek_mode", [0o600, 0o400])
async def test_a_kek_only_its_owner_can_read_is_accepted(tmp_path: Path, kek_mode: int) -> None:
    kek = tmp_path / "kek"
    KeySealer.generate_file(str(kek))
    kek.chmod(kek_mode)
    async with started_broker(broker_settings(tmp_path, kek_file=str(kek))) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain="kek.example.com", app="shop", disable_letsencrypt=True
            )
        )


@pytest.mark.parametrize("kek_mode", [0o644, 0o640])
async def test_a_kek_open_to_others_stops_the_start_with_the_chmod_to_run(
    tmp_path: Path, kek_mode: int
) -> None:
    settings = broker_settings(tmp_path)
    async with started_broker(settings):
        pass  # a store sealed with this KEK: only the mode is wrong
    kek = Path(settings.kek_file)
    kek.chmod(kek_mode)
    with pytest.raises(StartupError) as caught:
        await run(settings)
    message = str(caught.value)
    assert message.startswith("CERTBROKER_KEK_FILE")
    assert f"mode {kek_mode:04o}" in message
    assert f"run `chmod 600 {kek}`" in message

    kek.chmod(0o600)  # what the message says to do is enough
    async with started_broker(settings):
        pass


def test_the_command_exits_with_the_chmod_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kek = tmp_path / "kek"
    KeySealer.generate_file(str(kek))
    kek.chmod(0o644)
    for name, value in {
        "CERTBROKER_LISTEN": "127.0.0.1:0",
        "CERTBROKER_DB": str(tmp_path / "broker.sqlite3"),
        "CERTBROKER_KEK_FILE": str(kek),
        "CERTBROKER_ACME_DIRECTORY": "off",
        "CERTBROKER_HTTP01_LISTEN": "off",
    }.items():
        monkeypatch.setenv(name, value)
    assert server.main() == 1
    err = capsys.readouterr().err
    assert "certbroker: cannot start: CERTBROKER_KEK_FILE" in err
    assert f"chmod 600 {kek}" in err
