"""CERTBROKER_PLATFORM_DOMAINS and CERTBROKER_PLATFORM_ZONE: wildcards, checked, with DNS-01."""

from __future__ import annotations

from pathlib import Path

import pytest

from certbroker.config import MAX_PLATFORM_DOMAINS, ConfigError, Settings

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ="


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "tsig.key"
    path.write_text(f'key "broker-key" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n')
    return str(path)


def env(key_file: str, **changes: str) -> dict[str, str]:
    base = {
        "CERTBROKER_PLATFORM_DOMAINS": "*.osc-fr1.example.io",
        "CERTBROKER_DNS01_SERVER": "192.0.2.53",
        "CERTBROKER_DNS01_TSIG_KEY": key_file,
    }
    return {k: v for k, v in {**base, **changes}.items() if v != "UNSET"}


def test_unset_means_no_platform_domains() -> None:
    s = Settings.from_env({})
    assert (s.platform_domains, s.platform_zone) == ((), None)


def test_a_list_is_read_normalised_and_without_repeats(key_file: str) -> None:
    s = Settings.from_env(
        env(
            key_file,
            CERTBROKER_PLATFORM_DOMAINS=(
                "*.OSC-FR1.Example.io., *.osc-secnum-fr1.example.io *.osc-fr1.example.io"
            ),
        )
    )
    assert s.platform_domains == ("*.osc-fr1.example.io", "*.osc-secnum-fr1.example.io")
    assert s.platform_zone is None
    # without the delegation zone: the server and key serve the platform's zone alone
    assert s.dns01_zone is None
    assert s.dns01_server == ("192.0.2.53", 53)


def test_a_platform_domain_may_be_a_public_suffix(key_file: str) -> None:
    """eu.platform.sh and herokuapp.com are on the list, as a platform's app domain should be."""
    s = Settings.from_env(env(key_file, CERTBROKER_PLATFORM_DOMAINS="*.eu.platform.sh"))
    assert s.platform_domains == ("*.eu.platform.sh",)


def test_the_zone_must_hold_every_platform_domain(key_file: str) -> None:
    both = "*.osc-fr1.example.io,*.osc-secnum-fr1.example.io"
    s = Settings.from_env(
        env(key_file, CERTBROKER_PLATFORM_DOMAINS=both, CERTBROKER_PLATFORM_ZONE="Example.IO.")
    )
    assert s.platform_zone == "example.io"
    exact = Settings.from_env(env(key_file, CERTBROKER_PLATFORM_ZONE="osc-fr1.example.io"))
    assert exact.platform_zone == "osc-fr1.example.io"
    with pytest.raises(ConfigError, match=r"CERTBROKER_PLATFORM_ZONE='example\.net'.*osc-fr1"):
        Settings.from_env(env(key_file, CERTBROKER_PLATFORM_ZONE="example.net"))
    with pytest.raises(ConfigError, match="CERTBROKER_PLATFORM_ZONE="):
        Settings.from_env(env(key_file, CERTBROKER_PLATFORM_ZONE="not a zone"))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("osc-fr1.example.io", "expected a wildcard"),  # the apps' names need the wildcard
        ("*.io", "expected a wildcard with at least two labels"),
        ("*.a..example.io", "empty label"),
        ("x.*.example.io", "leftmost label"),
        ("*.exa_mple.io", "outside letters"),
    ],
)
def test_bad_names_name_the_variable(key_file: str, value: str, error: str) -> None:
    with pytest.raises(ConfigError, match="CERTBROKER_PLATFORM_DOMAINS") as caught:
        Settings.from_env(env(key_file, CERTBROKER_PLATFORM_DOMAINS=value))
    assert error in str(caught.value)


def test_too_many_is_a_mistake(key_file: str) -> None:
    many = ",".join(f"*.r{i}.example.io" for i in range(MAX_PLATFORM_DOMAINS + 1))
    with pytest.raises(ConfigError, match=f"over {MAX_PLATFORM_DOMAINS}"):
        Settings.from_env(env(key_file, CERTBROKER_PLATFORM_DOMAINS=many))


@pytest.mark.parametrize("missing", ["CERTBROKER_DNS01_SERVER", "CERTBROKER_DNS01_TSIG_KEY"])
def test_the_dns01_server_and_key_are_needed(key_file: str, missing: str) -> None:
    with pytest.raises(ConfigError, match="needs both CERTBROKER_DNS01_SERVER and"):
        Settings.from_env(env(key_file, **{missing: "UNSET"}))


def test_the_zone_alone_is_refused() -> None:
    with pytest.raises(ConfigError, match="CERTBROKER_PLATFORM_ZONE needs"):
        Settings.from_env({"CERTBROKER_PLATFORM_ZONE": "example.io"})


def test_server_and_key_alone_still_need_a_use(key_file: str) -> None:
    """Without platform domains, the server and key are for delegation: the zone is needed."""
    with pytest.raises(ConfigError, match="must be set together"):
        Settings.from_env(env(key_file, CERTBROKER_PLATFORM_DOMAINS="UNSET"))


def test_delegation_and_platform_together(key_file: str) -> None:
    s = Settings.from_env(env(key_file, CERTBROKER_DNS01_ZONE="acme.example.net"))
    assert s.dns01_zone == "acme.example.net"
    assert s.platform_domains == ("*.osc-fr1.example.io",)


def test_the_start_line_names_the_platform_domains_and_their_zone(key_file: str) -> None:
    from certbroker.startup import describe

    settings = Settings.from_env(env(key_file, CERTBROKER_PLATFORM_ZONE="example.io"))
    line = describe(settings, port=1, health_port=2, http01_port=3, kek_id="0badcafe")
    assert "; DNS-01 platform zones only via 192.0.2.53:53; " in line
    assert "; platform domains *.osc-fr1.example.io in zone example.io; " in line
    assert key_file not in line
