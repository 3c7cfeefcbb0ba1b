"""``certbroker sync``: the verb is wired into the main CLI and refuses bad flags with exit 2.

Running agents are covered by test_haproxy.py and test_nginx.py (they start
``certbroker sync`` as a process); here only what fails before any connection.
"""

from __future__ import annotations

import pytest

from certbroker_client.cli import build_parser, main


def test_sync_is_a_verb_with_two_targets() -> None:
    args = build_parser().parse_args(
        ["--addr", "10.0.0.1:50051", "sync", "haproxy", "--socket", "/s", "--crt-list", "/l"]
    )
    assert (args.command, args.sync_target, args.addr) == ("sync", "haproxy", "10.0.0.1:50051")
    assert args.prefix == "certbroker/"
    args = build_parser().parse_args(["sync", "nginx", "--dir", "/d", "--router-id", "edge-1"])
    assert (args.sync_target, args.router_id, args.map_file) == ("nginx", "edge-1", None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sync", "nginx", "--dir", "/nonexistent/certs"], "not a directory"),
        (["sync", "haproxy", "--socket", "/s", "--crt-list", "/l", "--prefix", "a b"], "prefix"),
        (["sync", "haproxy", "--socket", "/s", "--crt-list", "/l", "--check-interval", "0"], "0"),
        (["sync", "nginx", "--dir", ".", "--tls-cert", "/nonexistent.pem"], "go together"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_a_missing_required_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sync", "haproxy", "--socket", "/s"]) == 2
    assert "--crt-list" in capsys.readouterr().err
