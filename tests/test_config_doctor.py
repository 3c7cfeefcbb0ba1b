"""The doctor's settings: the probe's port, its deadline and its per-domain interval."""

from __future__ import annotations

from datetime import timedelta

import pytest

from certbroker.config import ConfigError, Settings


def test_defaults_probe_port_80_and_ten_seconds() -> None:
    s = Settings.from_env({})
    assert (s.doctor_http_port, s.doctor_timeout, s.doctor_interval) == (
        80,
        timedelta(seconds=10),
        timedelta(seconds=10),
    )


def test_values_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "CERTBROKER_DOCTOR_HTTP_PORT": "8080",
            "CERTBROKER_DOCTOR_TIMEOUT": "3s",
            "CERTBROKER_DOCTOR_INTERVAL": "1m",
        }
    )
    assert (s.doctor_http_port, s.doctor_timeout, s.doctor_interval) == (
        8080,
        timedelta(seconds=3),
        timedelta(minutes=1),
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CERTBROKER_DOCTOR_HTTP_PORT", "0"),
        ("CERTBROKER_DOCTOR_HTTP_PORT", "65536"),
        ("CERTBROKER_DOCTOR_HTTP_PORT", "http"),
        ("CERTBROKER_DOCTOR_TIMEOUT", "0s"),
        ("CERTBROKER_DOCTOR_INTERVAL", "soon"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
