"""CERTBROKER_METRICS_LISTEN, CERTBROKER_LOG_FORMAT, CERTBROKER_LOG_LEVEL_LIBRARIES."""

from __future__ import annotations

import pytest

from certbroker.config import ConfigError, Settings


def test_defaults_metrics_off_readable_logs_quiet_libraries() -> None:
    s = Settings.from_env({})
    assert s.metrics_listen is None
    assert (s.log_format, s.log_level, s.log_level_libraries) == ("text", "INFO", "WARNING")


def test_values_are_read() -> None:
    s = Settings.from_env(
        {
            "CERTBROKER_METRICS_LISTEN": "127.0.0.1:9464",
            "CERTBROKER_LOG_FORMAT": "JSON",
            "CERTBROKER_LOG_LEVEL": "debug",
            "CERTBROKER_LOG_LEVEL_LIBRARIES": "error",
        }
    )
    assert s.metrics_listen == ("127.0.0.1", 9464)
    assert (s.log_format, s.log_level, s.log_level_libraries) == ("json", "DEBUG", "ERROR")
    assert Settings.from_env({"CERTBROKER_METRICS_LISTEN": "off"}).metrics_listen is None


def test_metrics_beyond_loopback_need_plaintext_allowed() -> None:
    """The endpoint is plaintext and names every domain: not on a public address by accident."""
    with pytest.raises(ConfigError, match=r"^CERTBROKER_METRICS_LISTEN=.*not loopback"):
        Settings.from_env({"CERTBROKER_METRICS_LISTEN": "0.0.0.0:9464"})
    allowed = Settings.from_env(
        {"CERTBROKER_METRICS_LISTEN": "0.0.0.0:9464", "CERTBROKER_ALLOW_PLAINTEXT": "1"}
    )
    assert allowed.metrics_listen == ("0.0.0.0", 9464)  # noqa: S104 (the point of the test)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("CERTBROKER_METRICS_LISTEN", "9464"),
        ("CERTBROKER_METRICS_LISTEN", "127.0.0.1:99999"),
        ("CERTBROKER_LOG_FORMAT", "logfmt"),
        ("CERTBROKER_LOG_LEVEL_LIBRARIES", "quiet"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}\b"):
        Settings.from_env({name: raw})
