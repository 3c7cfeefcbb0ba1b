"""No plaintext by accident: listen, health and roles settings refuse what TLS-less would expose."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from certbroker.config import ConfigError, Settings, is_loopback
from tests.tls import MtlsFiles


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, str]:
    """The three TLS variables pointing at a valid identity (config parses them)."""
    mtls = MtlsFiles(tmp_path)
    server = mtls.issue("broker", server=True)
    return {
        "CERTBROKER_TLS_CERT": str(server.cert),
        "CERTBROKER_TLS_KEY": str(server.key),
        "CERTBROKER_TLS_CLIENT_CA": str(mtls.ca),
    }


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:50051", "[::]:50051", "192.0.2.10:50051", "broker.internal:50051"]
)
def test_plaintext_off_loopback_is_refused_naming_the_opt_out(listen: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CERTBROKER_LISTEN": listen})
    message = str(caught.value)
    assert message.startswith("CERTBROKER_LISTEN=")
    assert "set CERTBROKER_TLS_CERT/_KEY/_CLIENT_CA or CERTBROKER_ALLOW_PLAINTEXT=1" in message


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:1", "127.9.8.7:1", "[::1]:1", "localhost:1", "LocalHost:1"]
)
def test_plaintext_on_loopback_needs_no_opt_out(listen: str) -> None:
    assert Settings.from_env({"CERTBROKER_LISTEN": listen}).listen == listen


@pytest.mark.parametrize("value", ["1", "true", "yes", "TRUE"])
def test_the_opt_out_allows_plaintext_anywhere(value: str) -> None:
    s = Settings.from_env(
        {"CERTBROKER_LISTEN": "0.0.0.0:50051", "CERTBROKER_ALLOW_PLAINTEXT": value}
    )
    assert s.allow_plaintext is True
    assert s.listen == "0.0.0.0:50051"


def test_an_explicit_no_keeps_the_refusal() -> None:
    env = {"CERTBROKER_LISTEN": "0.0.0.0:50051", "CERTBROKER_ALLOW_PLAINTEXT": "0"}
    with pytest.raises(ConfigError, match="CERTBROKER_ALLOW_PLAINTEXT=1"):
        Settings.from_env(env)


def test_a_bad_opt_out_value_names_its_variable() -> None:
    with pytest.raises(ConfigError, match=r"^CERTBROKER_ALLOW_PLAINTEXT='please'"):
        Settings.from_env({"CERTBROKER_ALLOW_PLAINTEXT": "please"})


def test_tls_listens_anywhere_without_the_opt_out(tls: dict[str, str]) -> None:
    s = Settings.from_env({**tls, "CERTBROKER_LISTEN": "[::]:50051"})
    assert s.tls_enabled and not s.allow_plaintext


@pytest.mark.parametrize("allow", ["0", "1"])
def test_roles_without_tls_are_refused_naming_the_tls_variables(allow: str) -> None:
    env = {"CERTBROKER_ROLES": "router-1=router", "CERTBROKER_ALLOW_PLAINTEXT": allow}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith("CERTBROKER_ROLES")
    assert "CERTBROKER_TLS_CERT" in str(caught.value)


def test_roles_with_tls_are_accepted(tls: dict[str, str]) -> None:
    s = Settings.from_env({**tls, "CERTBROKER_ROLES": "router-1=router"})
    assert dict(s.roles) == {"router-1": "router"}


def test_health_listener_defaults_to_loopback_and_can_be_moved_or_turned_off() -> None:
    assert Settings.from_env({}).health_listen == ("127.0.0.1", 50052)
    assert Settings.from_env({"CERTBROKER_HEALTH_LISTEN": "[::1]:9000"}).health_listen == (
        "::1",
        9000,
    )
    assert Settings.from_env({"CERTBROKER_HEALTH_LISTEN": "off"}).health_listen is None


def test_health_listener_off_loopback_needs_the_opt_out_even_with_tls(tls: dict[str, str]) -> None:
    env = {**tls, "CERTBROKER_HEALTH_LISTEN": "0.0.0.0:50052"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith("CERTBROKER_HEALTH_LISTEN=")
    assert "CERTBROKER_ALLOW_PLAINTEXT=1" in str(caught.value)
    env["CERTBROKER_ALLOW_PLAINTEXT"] = "1"
    assert Settings.from_env(env).health_listen == ("0.0.0.0", 50052)  # noqa: S104


def test_health_listener_malformed_names_its_variable() -> None:
    with pytest.raises(ConfigError, match=r"^CERTBROKER_HEALTH_LISTEN=.*expected host:port"):
        Settings.from_env({"CERTBROKER_HEALTH_LISTEN": "50052"})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104
        ("::", False),
        ("10.0.0.1", False),
        ("::ffff:127.0.0.1", False),  # conservative: a mapped address is not treated as ::1
        ("localhost.example.com", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_http01_limits_are_settings_with_defaults() -> None:
    default = Settings.from_env({})
    assert default.http01_max_connections == 1024
    assert default.http01_max_connections_per_peer == 64
    assert default.http01_header_timeout == timedelta(seconds=10)
    assert default.http01_idle_timeout == timedelta(seconds=30)
    s = Settings.from_env(
        {
            "CERTBROKER_HTTP01_MAX_CONNECTIONS": "200",
            "CERTBROKER_HTTP01_MAX_CONNECTIONS_PER_PEER": "8",
            "CERTBROKER_HTTP01_HEADER_TIMEOUT": "2s",
            "CERTBROKER_HTTP01_IDLE_TIMEOUT": "1m",
        }
    )
    assert s.http01_max_connections == 200
    assert s.http01_max_connections_per_peer == 8
    assert s.http01_header_timeout == timedelta(seconds=2)
    assert s.http01_idle_timeout == timedelta(minutes=1)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("CERTBROKER_HTTP01_MAX_CONNECTIONS", "0"),
        ("CERTBROKER_HTTP01_MAX_CONNECTIONS_PER_PEER", "lots"),
        ("CERTBROKER_HTTP01_HEADER_TIMEOUT", "0s"),
        ("CERTBROKER_HTTP01_IDLE_TIMEOUT", "forever"),
    ],
)
def test_bad_http01_limits_name_their_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}="):
        Settings.from_env({name: raw})


def test_router_id_is_identity_needs_tls_and_a_yes_or_no(tls: dict[str, str]) -> None:
    assert Settings.from_env({}).router_id_is_identity is False
    strict = Settings.from_env({**tls, "CERTBROKER_ROUTER_ID_IS_IDENTITY": "1"})
    assert strict.router_id_is_identity is True
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CERTBROKER_ROUTER_ID_IS_IDENTITY": "yes"})
    assert str(caught.value).startswith("CERTBROKER_ROUTER_ID_IS_IDENTITY needs TLS")
    with pytest.raises(ConfigError, match=r"^CERTBROKER_ROUTER_ID_IS_IDENTITY='strict'"):
        Settings.from_env({**tls, "CERTBROKER_ROUTER_ID_IS_IDENTITY": "strict"})
