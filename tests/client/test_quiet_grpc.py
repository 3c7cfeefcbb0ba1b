"""The CLI keeps gRPC's C core quiet unless told otherwise (end to end: test_cli_tls.py)."""

from __future__ import annotations

from certbroker_client._quiet_grpc import quiet


def test_sets_quiet_defaults() -> None:
    env: dict[str, str] = {}
    quiet(["--app", "shop", "domains-add", "x"], env)
    assert env == {"GRPC_VERBOSITY": "NONE", "GRPC_TRACE": ""}


def test_keeps_what_the_user_set() -> None:
    env = {"GRPC_VERBOSITY": "DEBUG", "GRPC_TRACE": "http"}
    quiet(["domains"], env)
    assert env == {"GRPC_VERBOSITY": "DEBUG", "GRPC_TRACE": "http"}


def test_leaves_serve_alone_even_after_global_options() -> None:
    env: dict[str, str] = {}
    quiet(["serve"], env)
    quiet(["--addr", "serve", "domains"], env)  # "serve" here is --addr's value
    assert env == {"GRPC_VERBOSITY": "NONE", "GRPC_TRACE": ""}
    env2: dict[str, str] = {}
    quiet(["--timeout", "5", "serve"], env2)
    assert env2 == {}
