"""The platform's syntax: global options (``--app``, ``--addr``, ``--json``, ``--tls-*``,
``--timeout``) before or after the verb, and the new ``domains-add`` flags.

``scalingo --app my-app domains-add ...`` is how the platform's own CLI is
typed; ``certbroker --app shop domains-add x`` used to end in "invalid
choice". The parser is checked in-process for every verb; a real broker
checks that both positions reach it the same.
"""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from certbroker_client import cli
from tests.client.clirun import assert_clean_error, run
from tests.client.conftest import RunningBroker

GLOBALS = ["--addr", "10.0.0.1:7", "--json", "--tls-ca", "ca.pem", "--timeout", "5"]


@pytest.mark.parametrize(
    "verb",
    [
        ["domains-add", "x.example.com"],
        ["domains-ssl", "x.example.com", "--disable"],
        ["domains-renew", "x.example.com"],
        ["domains-remove", "x.example.com"],
        ["domains"],
        ["status", "x.example.com"],
        ["routers"],
    ],
)
def test_global_options_before_or_after_the_verb_mean_the_same(verb: list[str]) -> None:
    before = cli.parse(["--app", "shop", *GLOBALS, *verb])
    after = cli.parse([*verb, "--app", "shop", *GLOBALS])
    split = cli.parse(["--json", "--app", "shop", *verb, "--addr", "10.0.0.1:7", "--tls-ca",
                       "ca.pem", "--timeout", "5"])  # fmt: skip
    for args in (before, after, split):
        assert args.app == "shop"
        assert args.addr == "10.0.0.1:7"
        assert args.json is True
        assert args.tls_ca == "ca.pem"
        assert args.timeout == 5.0
    # Given only before the verb, a sub-command's defaults must not erase it.
    assert cli.parse(["--addr", "h:1", "--app", "a", *verb]).addr == "h:1"
    assert cli.parse(["--json", *verb, "--app", "a"]).json is True
    assert cli.parse([*verb, "--addr", "h:1", "--app", "a"]).json is False


def test_filters_collect_every_app_on_both_sides() -> None:
    args = cli.parse(["--app", "a", "watch", "--app", "b", "--domain", "x.example.com"])
    assert args.app == ["a", "b"]
    sync = cli.parse(["--addr", "h:1", "--app", "a", "sync", "haproxy", "--socket", "s",
                      "--crt-list", "l", "--app", "b"])  # fmt: skip
    assert (sync.app, sync.addr) == (["a", "b"], "h:1")
    router = cli.parse(["--app", "a", "--tls-ca", "ca.pem", "router"])
    assert (router.app, router.tls_ca) == (["a"], "ca.pem")


def test_one_app_verbs_refuse_two_different_apps() -> None:
    with pytest.raises(cli.UsageError, match="several apps"):
        cli.parse(["--app", "a", "domains-add", "x.example.com", "--app", "b"])
    same = cli.parse(["--app", "a", "domains-add", "x.example.com", "--app", "a"])
    assert same.app == "a"
    with pytest.raises(cli.UsageError, match="needs --app"):
        cli.parse(["domains-add", "x.example.com"])


def test_new_domains_add_flags_parse() -> None:
    args = cli.parse(["--app", "a", "domains-add", "*.example.com", "--key-algorithm", "rsa-2048",
                      "--challenge", "dns-01", "--include-apex", "--wait"])  # fmt: skip
    assert (args.key_algorithm, args.challenge, args.include_apex, args.wait) == (
        "rsa-2048", "dns-01", True, True,
    )  # fmt: skip


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"certbroker {importlib.metadata.version('certbroker')}"


def test_platform_syntax_against_a_broker(broker: RunningBroker) -> None:
    first, second = "one.cli-syntax.example.com", "two.cli-syntax.example.com"
    added = run("--app", "syn", "domains-add", first, "--no-letsencrypt", addr=broker.addr)
    assert added.returncode == 0, added.stderr
    assert "App:             syn" in added.stdout
    # Everything after the verb, --addr included.
    after = run("domains-add", second, "--no-letsencrypt", "--app", "syn", "--addr", broker.addr)
    assert after.returncode == 0, after.stderr

    for argv in (["--app", "syn", "domains"], ["domains", "--app", "syn"]):
        listing = run(*argv, "--json", addr=broker.addr)
        assert listing.returncode == 0, listing.stderr
        names = [d["domain"] for d in json.loads(listing.stdout)["domains"]]
        assert names == [first, second]

    for argv in (["--json", "status", first], ["status", first, "--json"]):
        status = run(*argv, addr=broker.addr)
        assert json.loads(status.stdout)["app"] == "syn"

    wrong = run("--app", "other", "status", first, addr=broker.addr)
    assert_clean_error(wrong, 1, "error: FAILED_PRECONDITION (DOMAIN_OWNED_BY_OTHER_APP)")
    assert "app 'syn'" not in wrong.stderr  # the broker's refusal never names the owner

    refused = run("--app", "other", "domains-remove", second, addr=broker.addr)
    assert_clean_error(refused, 1, "error: FAILED_PRECONDITION (DOMAIN_OWNED_BY_OTHER_APP)")
    removed = run("--app", "syn", "domains-remove", second, addr=broker.addr)
    assert removed.returncode == 0, removed.stderr

    watched = run("--app", "syn", "watch", "--app", "nobody", "--json", "--count", "2",
                  addr=broker.addr, timeout=20)  # fmt: skip
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [e["type"] for e in events] == ["EVENT_TYPE_SNAPSHOT", "EVENT_TYPE_SNAPSHOT_COMPLETE"]
    assert events[0]["domain"]["domain"] == first

    twice = run("--app", "a", "domains-add", "x.cli-syntax.example.com", "--app", "b",
                addr=broker.addr)  # fmt: skip
    assert_clean_error(twice, 2, "error: --app given for several apps (a, b)")


def test_key_algorithm_challenge_and_apex_reach_the_broker(broker: RunningBroker) -> None:
    # Without Let's Encrypt: this broker has no DNS-01 zone, and a DNS-01 domain that wants
    # Let's Encrypt is refused there (DNS01_NOT_CONFIGURED); the settings are stored anyway.
    rsa = run("--app", "flags", "domains-add", "rsa.cli-flags.example.com", "--key-algorithm",
              "rsa-2048", "--challenge", "dns-01", "--no-letsencrypt", "--json",
              addr=broker.addr)  # fmt: skip
    assert rsa.returncode == 0, rsa.stderr
    data = json.loads(rsa.stdout)
    assert data["keyAlgorithm"] == "KEY_ALGORITHM_RSA_2048"
    assert data["challengeType"] == "CHALLENGE_TYPE_DNS_01"

    apex = run("--app", "flags", "domains-add", "*.apex.cli-flags.example.com", "--include-apex",
               "--no-letsencrypt", "--json", addr=broker.addr)  # fmt: skip
    assert apex.returncode == 0, apex.stderr
    assert json.loads(apex.stdout)["includeApex"] is True

    not_wild = run("--app", "flags", "domains-add", "plain.cli-flags.example.com",
                   "--include-apex", addr=broker.addr)  # fmt: skip
    assert_clean_error(not_wild, 1, "error: INVALID_ARGUMENT (INCLUDE_APEX_INVALID): include_apex")
    assert len(not_wild.stderr.splitlines()) == 1

    bad = run("--app", "flags", "domains-add", "x.cli-flags.example.com", "--key-algorithm",
              "rsa-4096", addr=broker.addr)  # fmt: skip
    assert bad.returncode == 2
    assert "invalid choice: 'rsa-4096'" in bad.stderr
