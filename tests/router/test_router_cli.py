"""``certbroker router`` flags for the client limits: they reach the router, bad values exit 2."""

from __future__ import annotations

import argparse

import pytest

from certbroker_client import router_cli
from certbroker_client.reference_router import Limits


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    router_cli._add_arguments(parser)
    return parser.parse_args(argv)


def test_limit_flags_reach_the_router_config() -> None:
    config, _, _ = router_cli._config(
        parse(
            "--max-connections", "7", "--header-timeout", "1.5",
            "--client-idle-timeout", "20", "--max-body-bytes", "4096",
        )
    )  # fmt: skip
    assert config.limits == Limits(
        max_connections=7, head_timeout=1.5, idle_timeout=20, max_body_bytes=4096
    )
    assert router_cli._config(parse())[0].limits == Limits()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-connections", "0"),
        ("--header-timeout", "-1"),
        ("--client-idle-timeout", "nan"),
        ("--client-idle-timeout", "inf"),
        ("--max-body-bytes", "0"),
    ],
)
def test_bad_limits_exit_2_naming_the_flag(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert router_cli.main([flag, value]) == router_cli.EXIT_USAGE
    assert flag in capsys.readouterr().err
