"""Settings for several brokers on one database: the lease and this broker's id."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

import pytest

from certbroker.config import ConfigError, Settings, broker_id


def test_defaults_a_thirty_second_lease_and_a_generated_id() -> None:
    s = Settings.from_env({})
    assert (s.lease, s.broker_id) == (timedelta(seconds=30), "")
    first, second = broker_id(s), broker_id(s)
    assert first != second  # a random part: a recycled pid never inherits leases
    assert f"-{os.getpid()}-" in first


def test_values_from_the_environment() -> None:
    s = Settings.from_env({"CERTBROKER_LEASE": "45s", "CERTBROKER_BROKER_ID": "broker-b.eu:2"})
    assert (s.lease, s.broker_id) == (timedelta(seconds=45), "broker-b.eu:2")
    assert broker_id(s) == "broker-b.eu:2"
    assert broker_id(replace(s, broker_id="")) != "broker-b.eu:2"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CERTBROKER_LEASE", "2s"),  # renewed every third: too short to survive a pause
        ("CERTBROKER_LEASE", "0"),
        ("CERTBROKER_LEASE", "soon"),
        ("CERTBROKER_BROKER_ID", "has space"),
        ("CERTBROKER_BROKER_ID", "-leading-dash"),
        ("CERTBROKER_BROKER_ID", "x" * 101),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
