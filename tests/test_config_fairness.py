"""CERTBROKER_MAX_INFLIGHT_PER_PEER and CERTBROKER_BAD_REQUESTS_PER_PEER (api/fairness.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from certbroker.config import ConfigError, Settings, unknown_variables
from certbroker.limits import Bucket


def test_defaults_leave_normal_clients_alone() -> None:
    settings = Settings.from_env({})
    assert settings.max_inflight_per_peer == 100
    assert settings.bad_requests_per_peer == Bucket(100, timedelta(seconds=10))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("16", 16), (" 500 ", 500), ("0", 0)],  # 0: no cap
)
def test_max_inflight_per_peer(raw: str, expected: int) -> None:
    env = {"CERTBROKER_MAX_INFLIGHT_PER_PEER": raw}
    assert Settings.from_env(env).max_inflight_per_peer == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20/1m", Bucket(20, timedelta(minutes=1))),
        ("50", Bucket(50, timedelta(seconds=10))),  # a plain count: per 10 seconds
        ("0", None),
        ("off", None),
    ],
)
def test_bad_requests_per_peer(raw: str, expected: Bucket | None) -> None:
    env = {"CERTBROKER_BAD_REQUESTS_PER_PEER": raw}
    assert Settings.from_env(env).bad_requests_per_peer == expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("CERTBROKER_MAX_INFLIGHT_PER_PEER", "-1"),
        ("CERTBROKER_MAX_INFLIGHT_PER_PEER", "many"),
        ("CERTBROKER_BAD_REQUESTS_PER_PEER", "ten"),
        ("CERTBROKER_BAD_REQUESTS_PER_PEER", "10/0s"),
        ("CERTBROKER_BAD_REQUESTS_PER_PEER", "-5"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}\b"):
        Settings.from_env({name: raw})


def test_both_are_known_variables() -> None:
    env = {"CERTBROKER_MAX_INFLIGHT_PER_PEER": "1", "CERTBROKER_BAD_REQUESTS_PER_PEER": "1"}
    assert unknown_variables(env) == []
