"""Settings from the environment: defaults, every variable, and a loud error per bad value."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from certbroker.config import LETS_ENCRYPT_PRODUCTION, ConfigError, Settings, parse_hostport
from certbroker.limits import Bucket, Limits
from tests.tls import MtlsFiles


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name in ("acme-ca.pem", "trust.pem"):
        path = tmp_path / name
        path.write_text("x")
        out[name] = str(path)
    mtls = MtlsFiles(tmp_path / "tls")  # the TLS files are parsed at config time
    server = mtls.issue("broker", server=True)
    out.update({"cert.pem": str(server.cert), "key.pem": str(server.key), "ca.pem": str(mtls.ca)})
    return out


def test_defaults_with_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.acme_directory == LETS_ENCRYPT_PRODUCTION
    assert settings.dns_check_interval == timedelta(seconds=60)
    assert settings.heartbeat_interval == timedelta(seconds=15)
    assert settings.event_retention == timedelta(days=7)
    assert settings.http01_listen == ("127.0.0.1", 8402)
    assert settings.dns_servers is None
    assert settings.platform_targets == ()
    assert dict(settings.roles) == {}
    # Let's Encrypt's 2026 buckets (certbroker.limits)
    assert settings.quota_account_orders == Bucket(300, timedelta(hours=3))
    assert settings.quota_per_registered_domain == Bucket(50, timedelta(days=7))
    assert settings.quota_per_name_set == Bucket(5, timedelta(days=7))
    assert settings.quota_failed_authorizations == Bucket(5, timedelta(hours=1))
    assert settings.limits == Limits()
    assert settings.tls_enabled is False


def test_blank_values_keep_the_defaults() -> None:
    env = {"CERTBROKER_LISTEN": "  ", "CERTBROKER_DB": "", "CERTBROKER_WATCH_BUFFER": " "}
    assert Settings.from_env(env) == Settings()


def test_every_variable_is_parsed(files: dict[str, str]) -> None:
    env = {
        "CERTBROKER_LISTEN": " [::]:6000 ",
        "CERTBROKER_DB": "/data/cb.sqlite3",
        "CERTBROKER_ACME_DIRECTORY": "https://pebble:14000/dir",
        "CERTBROKER_ACME_CA_BUNDLE": files["acme-ca.pem"],
        "CERTBROKER_ACME_EMAIL": "ops@example.com",
        "CERTBROKER_TRUST_BUNDLE": files["trust.pem"],
        "CERTBROKER_KEK_FILE": "/secrets/kek",
        "CERTBROKER_CAA_IDENTITY": "pebble.test",
        "CERTBROKER_TLS_CERT": files["cert.pem"],
        "CERTBROKER_TLS_KEY": files["key.pem"],
        "CERTBROKER_TLS_CLIENT_CA": files["ca.pem"],
        "CERTBROKER_DNS_SERVERS": "8.8.8.8, [::1]:53 dns.internal:5353",
        "CERTBROKER_PLATFORM_TARGETS": "lb.example.net,192.0.2.1  2001:db8::1",
        "CERTBROKER_HTTP01_LISTEN": "192.0.2.5:80",
        "CERTBROKER_DNS_CHECK_INTERVAL": "90s",
        "CERTBROKER_EVENT_RETENTION": "3d",
        "CERTBROKER_HEARTBEAT_INTERVAL": "500ms",
        "CERTBROKER_WATCH_SEND_TIMEOUT": "10s",
        "CERTBROKER_COMPACTION_INTERVAL": "30m",
        "CERTBROKER_WATCH_BUFFER": "64",
        "CERTBROKER_ACME_WORKERS": "4",
        "CERTBROKER_MAX_CONCURRENT_ORDERS": "8",
        "CERTBROKER_QUOTA_PER_REGISTERED_DOMAIN": "20",
        "CERTBROKER_QUOTA_PER_NAME_SET": "2/1d",
        "CERTBROKER_QUOTA_ACCOUNT_ORDERS": "100/90m",
        "CERTBROKER_QUOTA_FAILED_AUTHORIZATIONS": "3",
        "CERTBROKER_ROLES": "router-1=router, api.internal=api ops=admin",
        "CERTBROKER_TRACES_EXPORTER": "otlp",
        "CERTBROKER_LOG_LEVEL": "debug",
        "CERTBROKER_MAX_PENDING_REQUESTS": "100",
    }
    s = Settings.from_env(env)
    assert s.listen == "[::]:6000"
    assert s.db == "/data/cb.sqlite3"
    assert s.acme_directory == "https://pebble:14000/dir"
    assert s.acme_ca_bundle == files["acme-ca.pem"]
    assert s.acme_email == "ops@example.com"
    assert s.trust_bundle == files["trust.pem"]
    assert s.kek_file == "/secrets/kek"
    assert s.caa_identity == "pebble.test"
    assert (s.tls_cert, s.tls_key, s.tls_client_ca) == (
        files["cert.pem"],
        files["key.pem"],
        files["ca.pem"],
    )
    assert s.tls_enabled is True
    assert s.dns_servers == (("8.8.8.8", 53), ("::1", 53), ("dns.internal", 5353))
    assert s.platform_targets == ("lb.example.net", "192.0.2.1", "2001:db8::1")
    assert s.http01_listen == ("192.0.2.5", 80)
    assert s.dns_check_interval == timedelta(seconds=90)
    assert s.event_retention == timedelta(days=3)
    assert s.heartbeat_interval == timedelta(milliseconds=500)
    assert s.watch_send_timeout == timedelta(seconds=10)
    assert s.compaction_interval == timedelta(minutes=30)
    assert s.watch_buffer == 64
    assert s.acme_workers == 4
    assert s.max_concurrent_orders == 8
    # a plain count keeps the variable's period (the older variables: 7 days)
    assert s.quota_per_registered_domain == Bucket(20, timedelta(days=7))
    assert s.quota_per_name_set == Bucket(2, timedelta(days=1))
    assert s.quota_account_orders == Bucket(100, timedelta(minutes=90))
    assert s.quota_account_orders.interval == timedelta(seconds=54)
    assert s.quota_failed_authorizations == Bucket(3, timedelta(hours=1))
    assert dict(s.roles) == {"router-1": "router", "api.internal": "api", "ops": "admin"}
    assert s.traces_exporter == "otlp"
    assert s.log_level == "DEBUG"
    assert s.max_pending_requests == 100


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("60", timedelta(seconds=60)),
        ("60s", timedelta(seconds=60)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5s", timedelta(seconds=1.5)),
        (" 30s ", timedelta(seconds=30)),
    ],
)
def test_durations(raw: str, expected: timedelta) -> None:
    assert Settings.from_env({"CERTBROKER_DNS_CHECK_INTERVAL": raw}).dns_check_interval == expected


def test_key_retention_defaults_to_a_week_and_is_a_duration() -> None:
    assert Settings.from_env({}).key_retention == timedelta(days=7)
    assert Settings.from_env({"CERTBROKER_KEY_RETENTION": "36h"}).key_retention == timedelta(
        hours=36
    )
    for bad in ("0", "a week"):
        with pytest.raises(ConfigError, match=r"^CERTBROKER_KEY_RETENTION="):
            Settings.from_env({"CERTBROKER_KEY_RETENTION": bad})


def test_http01_listen_off_disables_the_responder() -> None:
    assert Settings.from_env({"CERTBROKER_HTTP01_LISTEN": "off"}).http01_listen is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:53", ("127.0.0.1", 53)),
        ("[::1]:53", ("::1", 53)),
        ("[2001:db8::1]:5353", ("2001:db8::1", 5353)),
        ("[::1]", ("::1", 53)),
        ("ns1.example.net", ("ns1.example.net", 53)),
    ],
)
def test_hostport_with_a_default_port(raw: str, expected: tuple[str, int]) -> None:
    assert parse_hostport("X", raw, 53) == expected


@pytest.mark.parametrize("raw", ["localhost", "host:", "host:port", "::1:53", "[::1]:x", ":53"])
def test_hostport_without_a_port_or_malformed_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^X=.*expected host:port"):
        parse_hostport("X", raw)


def test_hostport_port_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^X='h:70000': port out of range"):
        parse_hostport("X", "h:70000")


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("CERTBROKER_LISTEN", "localhost"),
        ("CERTBROKER_LISTEN", "127.0.0.1:99999"),
        ("CERTBROKER_HTTP01_LISTEN", "80"),
        ("CERTBROKER_DNS_SERVERS", "8.8.8.8, bad:host:1"),
        ("CERTBROKER_DNS_CHECK_INTERVAL", "a minute"),
        ("CERTBROKER_EVENT_RETENTION", "7w"),
        ("CERTBROKER_HEARTBEAT_INTERVAL", "-5s"),
        ("CERTBROKER_WATCH_SEND_TIMEOUT", "soon"),
        ("CERTBROKER_COMPACTION_INTERVAL", "1y"),
        ("CERTBROKER_WATCH_BUFFER", "0"),
        ("CERTBROKER_WATCH_BUFFER", "many"),
        ("CERTBROKER_ACME_WORKERS", "1.5"),
        ("CERTBROKER_MAX_CONCURRENT_ORDERS", "-1"),
        ("CERTBROKER_QUOTA_PER_REGISTERED_DOMAIN", "0"),
        ("CERTBROKER_QUOTA_PER_NAME_SET", "five"),
        ("CERTBROKER_QUOTA_PER_NAME_SET", "5/"),
        ("CERTBROKER_QUOTA_ACCOUNT_ORDERS", "300/3 fortnights"),
        ("CERTBROKER_QUOTA_ACCOUNT_ORDERS", "0/3h"),
        ("CERTBROKER_QUOTA_ACCOUNT_ORDERS", "300/0s"),
        ("CERTBROKER_QUOTA_FAILED_AUTHORIZATIONS", "5/60d"),
        ("CERTBROKER_QUOTA_FAILED_AUTHORIZATIONS", "-5"),
        ("CERTBROKER_MAX_PENDING_REQUESTS", "0"),
        ("CERTBROKER_ROUTER_REPORT_INTERVAL", "0s"),
        ("CERTBROKER_MAX_ROUTERS", "0"),
        ("CERTBROKER_MAX_ROUTERS_PER_IDENTITY", "0"),
        ("CERTBROKER_ROLES", "router-1=superuser"),
        ("CERTBROKER_ROLES", "router-1"),
        ("CERTBROKER_ROLES", "=router"),
        ("CERTBROKER_TRACES_EXPORTER", "jaeger"),
        ("CERTBROKER_LOG_LEVEL", "verbose"),
        # durations beyond any use: the arithmetic on them would overflow at run time
        ("CERTBROKER_KEY_RETENTION", "99999999d"),
        ("CERTBROKER_FORCED_RETRY_INTERVAL", "9999999999d"),
        ("CERTBROKER_DNS_CHECK_INTERVAL", "99999999999999999999"),
        ("CERTBROKER_ACME_CA_BUNDLE", "/nonexistent/ca.pem"),
        ("CERTBROKER_TRUST_BUNDLE", "/nonexistent/trust.pem"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}\b"):
        Settings.from_env({name: raw})


@pytest.mark.parametrize("missing", ["cert.pem", "key.pem", "ca.pem"])
def test_a_missing_tls_file_is_refused(files: dict[str, str], missing: str) -> None:
    variables = {
        "cert.pem": "CERTBROKER_TLS_CERT",
        "key.pem": "CERTBROKER_TLS_KEY",
        "ca.pem": "CERTBROKER_TLS_CLIENT_CA",
    }
    env = {variables[f]: files[f] for f in variables}
    env[variables[missing]] = files[missing] + ".gone"
    with pytest.raises(ConfigError, match=rf"^{variables[missing]}=.*no such file"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "present",
    [("cert.pem",), ("key.pem",), ("ca.pem",), ("cert.pem", "key.pem"), ("key.pem", "ca.pem")],
)
def test_the_tls_trio_must_be_set_together(files: dict[str, str], present: tuple[str, ...]) -> None:
    variables = {
        "cert.pem": "CERTBROKER_TLS_CERT",
        "key.pem": "CERTBROKER_TLS_KEY",
        "ca.pem": "CERTBROKER_TLS_CLIENT_CA",
    }
    env = {variables[f]: files[f] for f in present}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    for variable in variables.values():
        assert variable in str(caught.value)
    assert "must be set together" in str(caught.value)


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTBROKER_QUOTA_PER_NAME_SET", "3")
    assert Settings.from_env().quota_per_name_set == Bucket(3, timedelta(days=7))


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.db = "other"  # type: ignore[misc]


def test_router_reports_settings() -> None:
    assert (Settings().router_report_interval, Settings().max_routers) == (
        timedelta(seconds=10),
        10_000,
    )
    settings = Settings.from_env(
        {"CERTBROKER_ROUTER_REPORT_INTERVAL": "30s", "CERTBROKER_MAX_ROUTERS": "500"}
    )
    assert (settings.router_report_interval, settings.max_routers) == (timedelta(seconds=30), 500)
    assert Settings().max_routers_per_identity is None  # half of max_routers
    shared = Settings.from_env({"CERTBROKER_MAX_ROUTERS_PER_IDENTITY": "4000"})
    assert shared.max_routers_per_identity == 4000
