"""CERTBROKER_DNS01_*: all three or none, a checked zone, a key file that parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from certbroker.config import ConfigError, Settings

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ="


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "tsig.key"
    path.write_text(f'key "broker-key" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n')
    return str(path)


def env(key_file: str, **changes: str) -> dict[str, str]:
    base = {
        "CERTBROKER_DNS01_ZONE": "Acme.Platform.Example.",
        "CERTBROKER_DNS01_SERVER": "192.0.2.53",
        "CERTBROKER_DNS01_TSIG_KEY": key_file,
    }
    return {**base, **changes}


def test_unset_means_no_dns01() -> None:
    s = Settings.from_env({})
    assert (s.dns01_zone, s.dns01_server, s.dns01_tsig_key) == (None, None, None)


def test_all_three_are_read(key_file: str) -> None:
    s = Settings.from_env(env(key_file))
    assert s.dns01_zone == "acme.platform.example"
    assert s.dns01_server == ("192.0.2.53", 53)
    assert s.dns01_tsig_key == key_file
    assert Settings.from_env(env(key_file, CERTBROKER_DNS01_SERVER="[::1]:5353")).dns01_server == (
        "::1",
        5353,
    )


def test_one_alone_is_refused(key_file: str) -> None:
    with pytest.raises(ConfigError, match="must be set together"):
        Settings.from_env({"CERTBROKER_DNS01_ZONE": "acme.platform.example"})


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"CERTBROKER_DNS01_ZONE": "no spaces.example"}, "CERTBROKER_DNS01_ZONE"),
        ({"CERTBROKER_DNS01_ZONE": "single"}, "CERTBROKER_DNS01_ZONE"),
        ({"CERTBROKER_DNS01_SERVER": "host:99999"}, "CERTBROKER_DNS01_SERVER"),
        ({"CERTBROKER_DNS01_TSIG_KEY": "/nonexistent/key"}, "no such file"),
    ],
)
def test_bad_values_name_the_variable(key_file: str, changes: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Settings.from_env(env(key_file, **changes))


def test_a_key_file_that_does_not_parse_stops_the_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("hmac-sha256 nonsense")
    with pytest.raises(ConfigError, match=r"CERTBROKER_DNS01_TSIG_KEY=.*expected a BIND key block"):
        Settings.from_env(env(str(bad)))
