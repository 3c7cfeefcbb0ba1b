"""Config checks made at start: typos in variable names, the ACME directory's scheme."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from certbroker.config import (
    KNOWN_VARIABLES,
    LETS_ENCRYPT_STAGING,
    ConfigError,
    Settings,
    unknown_variables,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_variable_the_code_reads_is_known() -> None:
    """A variable read anywhere but missing from the list would be warned about as a typo."""
    read = set()
    for folder in ("service", "clients/python/certbroker_client"):
        for path in (ROOT / folder).rglob("*.py"):
            read |= set(re.findall(r"\bCERTBROKER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    read = {name for name in read if not name.endswith("_")}  # prefixes in prose
    assert read - KNOWN_VARIABLES == set()


def test_every_known_variable_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    assert {name for name in KNOWN_VARIABLES if name not in readme} == set()


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("CERTBROKER_LISTNE", "CERTBROKER_LISTEN"),
        ("CERTBROKER_ACME_DIR", "CERTBROKER_ACME_DIRECTORY"),
        ("CERTBROKER_HTTP_LISTEN", "CERTBROKER_HTTP01_LISTEN"),
        ("CERTBROKER_KEK_FILES", "CERTBROKER_KEK_FILE"),
    ],
)
def test_a_typo_is_warned_about_with_the_closest_name(typo: str, suggestion: str) -> None:
    env = {typo: "x", "CERTBROKER_DB": "/data/db", "HOME": "/root"}
    assert unknown_variables(env) == [
        f"unknown variable {typo} is ignored; did you mean {suggestion}?"
    ]
    Settings.from_env(env)  # a warning, never a refusal


def test_nothing_close_means_no_suggestion() -> None:
    assert unknown_variables({"CERTBROKER_ZZZZ": "1"}) == [
        "unknown variable CERTBROKER_ZZZZ is ignored"
    ]
    assert unknown_variables({"CERTBROKERX": "1", "OTHER_LISTEN": "1"}) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://ca.example/directory",
        "ca.example/directory",
        "ftp://ca.example/d",
        "https://",
        "https://ca.example:99999/d",
    ],
)
def test_the_acme_directory_must_be_https(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CERTBROKER_ACME_DIRECTORY": url})
    message = str(caught.value)
    assert message.startswith(f"CERTBROKER_ACME_DIRECTORY={url!r}: expected an https:// URL")
    assert LETS_ENCRYPT_STAGING in message


@pytest.mark.parametrize(
    ("raw", "value"),
    [("off", ""), (" https://127.0.0.1:14000/dir ", "https://127.0.0.1:14000/dir")],
)
def test_https_or_off_is_accepted(raw: str, value: str) -> None:
    assert Settings.from_env({"CERTBROKER_ACME_DIRECTORY": raw}).acme_directory == value
