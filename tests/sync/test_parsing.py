"""Pure pieces of the agents: HAProxy's CLI answers, the nginx map fragment, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from certbroker_client.sync.haproxy import (
    CrtListEntry,
    HAProxyRuntime,
    HAProxyTarget,
    parse_cert_list,
    parse_crt_list,
)
from certbroker_client.sync.nginx import render_map, write_atomic


def test_crt_list_lines_with_options_and_filters() -> None:
    answer = (
        "# /etc/haproxy/list.txt\n"
        "/etc/haproxy/default.pem\n"
        "certbroker/shop.example.com.pem shop.example.com\n"
        "certbroker/_wildcard.example.com.pem [alpn h2,http/1.1 ocsp-update off] *.example.com\n"
    )
    assert parse_crt_list(answer) == [
        CrtListEntry("/etc/haproxy/default.pem"),
        CrtListEntry("certbroker/shop.example.com.pem", "", ("shop.example.com",)),
        CrtListEntry(
            "certbroker/_wildcard.example.com.pem",
            "[alpn h2,http/1.1 ocsp-update off]",
            ("*.example.com",),
        ),
    ]


def test_numbered_crt_list_lines() -> None:
    answer = (
        "# /x/list.txt\n/x/default.pem:1\n"
        "certbroker/a.example.com.pem:2 a.example.com\n"
        "certbroker/a.example.com.pem:3 [alpn h2] b.example.com\n"
    )
    assert [(e.store, e.line, e.filters) for e in parse_crt_list(answer)] == [
        ("/x/default.pem", 1, ()),
        ("certbroker/a.example.com.pem", 2, ("a.example.com",)),
        ("certbroker/a.example.com.pem", 3, ("b.example.com",)),
    ]


def test_cert_list_separates_open_transactions() -> None:
    answer = (
        "# transaction\n*certbroker/a.example.com.pem\n"
        "# filename\n/x/default.pem\ncertbroker/a.example.com.pem\n"
    )
    assert parse_cert_list(answer) == (
        {"/x/default.pem", "certbroker/a.example.com.pem"},
        {"certbroker/a.example.com.pem"},
    )


def test_only_prefixed_domain_stores_are_the_agents() -> None:
    target = HAProxyTarget(HAProxyRuntime("/nonexistent"), "/x/list.txt", "certbroker/")
    assert target.store_of("*.example.com") == "certbroker/_wildcard.example.com.pem"
    assert target.name_of("certbroker/_wildcard.example.com.pem") == "*.example.com"
    assert target.name_of("/x/default.pem") is None
    assert target.name_of("certbroker/not a name.pem") is None
    with pytest.raises(ValueError):
        HAProxyTarget(HAProxyRuntime("/nonexistent"), "/x/list.txt", "has space/")


def test_the_map_routes_one_label_under_a_wildcard_and_keeps_exact_names() -> None:
    assert render_map(["a.example.com", "b.example.org"]) == ""  # no wildcard: nothing to say
    text = render_map(["*.ex-ample.com", "shop.ex-ample.com", "a.b.ex-ample.com", "other.org"])
    lines = text.splitlines()
    assert lines[0].startswith("#")
    assert r'"~^[a-z0-9-]+\.ex-ample\.com$" _wildcard.ex-ample.com;' in lines
    assert "shop.ex-ample.com shop.ex-ample.com;" in lines
    assert not any("other.org" in line or "a.b.ex-ample" in line for line in lines)


def test_write_atomic_replaces_whole_with_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "a.example.com.pem"
    path.write_text("old")
    path.chmod(0o644)
    write_atomic(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["a.example.com.pem"]  # no temporary file left
    write_atomic(path, b"group", mode=0o640, gid=os.getgid())
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
