"""The ``certbroker`` CLI as a subprocess against a real broker.

What a person or script relies on: exit codes, the seed's words in tables,
valid JSON with ``--json``, one-line errors (never a traceback), and ``watch``
printing changes as they happen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.client.clirun import CLI, Lines, assert_clean_error, run
from tests.client.conftest import RunningBroker, start_mtls_broker, stop_broker
from tests.infra.ports import free_port
from tests.tls import MtlsFiles


def test_add_without_letsencrypt_then_status_says_disabled(broker: RunningBroker) -> None:
    added = run("domains-add", "www.cli-add.example.com", "--app", "shop", "--no-letsencrypt",
                addr=broker.addr)  # fmt: skip
    assert added.returncode == 0, added.stderr
    status = run("status", "www.cli-add.example.com", addr=broker.addr)
    assert status.returncode == 0, status.stderr
    assert "Let's Encrypt:   Disabled" in status.stdout
    assert "App:             shop" in status.stdout
    assert "Serving:         none" in status.stdout


def test_domains_table_and_app_filter(broker: RunningBroker) -> None:
    for name, app in (("a.cli-list.example.com", "alpha"), ("b.cli-list.example.com", "beta")):
        assert (
            run("domains-add", name, "--app", app, "--no-letsencrypt", addr=broker.addr).returncode
            == 0
        )
    table = run("domains", addr=broker.addr)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("DOMAIN")
    assert any(line.startswith("a.cli-list.example.com") and "Disabled" in line for line in lines)
    only_beta = run("domains", "--app", "beta", addr=broker.addr).stdout
    assert "b.cli-list.example.com" in only_beta
    assert "a.cli-list.example.com" not in only_beta


def test_json_output_is_the_proto_json(broker: RunningBroker) -> None:
    run("domains-add", "json.cli.example.com", "--app", "j", "--no-letsencrypt", addr=broker.addr)
    status = run("status", "json.cli.example.com", "--json", addr=broker.addr)
    data = json.loads(status.stdout)
    assert data["domain"] == "json.cli.example.com"
    assert data["letsEncryptState"] == "LETS_ENCRYPT_STATE_DISABLED"
    # --json also before the verb, and for the list.
    listing = json.loads(run("--json", "domains", "--app", "j", addr=broker.addr).stdout)
    assert [d["domain"] for d in listing["domains"]] == ["json.cli.example.com"]


def test_bad_domain_is_said_once(broker: RunningBroker) -> None:
    result = run("domains-add", "bad_name..example.com", "--app", "x", addr=broker.addr)
    assert_clean_error(result, 1, "error: INVALID_ARGUMENT (DOMAIN_INVALID): domain: ")
    # One line carries every violation; none is printed a second time below it.
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.count("empty label") == 1
    assert result.stderr.count("'bad_name'") == 1


def test_unknown_domain_is_not_found(broker: RunningBroker) -> None:
    result = run("status", "nobody.cli.example.com", addr=broker.addr)
    assert_clean_error(result, 1, "error: NOT_FOUND")
    assert len(result.stderr.splitlines()) == 1


def test_addr_from_environment(broker: RunningBroker) -> None:
    result = run("domains", env={"CERTBROKER_ADDR": broker.addr})
    assert result.returncode == 0, result.stderr


def test_connection_refused_is_one_clean_line() -> None:
    port = free_port()
    result = run("status", "www.example.com", addr=f"127.0.0.1:{port}")
    assert_clean_error(
        result, 1, f"error: UNAVAILABLE: cannot reach the broker at 127.0.0.1:{port}"
    )
    assert len(result.stderr.splitlines()) == 1


def test_unreadable_file_is_a_usage_error(broker: RunningBroker, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    result = run("domains-ssl", "x.cli.example.com", "--cert", str(missing), "--key", str(missing),
                 addr=broker.addr)  # fmt: skip
    assert_clean_error(result, 2, "error: cannot read --cert file")
    assert len(result.stderr.splitlines()) == 1


def test_usage_errors_exit_2(broker: RunningBroker) -> None:
    assert run("domains-ssl", "x.cli.example.com", addr=broker.addr).returncode == 2
    assert run("domains-add", "x.cli.example.com", addr=broker.addr).returncode == 2  # no --app
    assert run("frobnicate").returncode == 2


def test_custom_certificate_install_and_disable(broker: RunningBroker, tmp_path: Path) -> None:
    name = "shop.cli-ssl.example.com"
    now = datetime.now(UTC)
    leaf = broker.pki.leaf(
        name, not_before=now - timedelta(days=1), not_after=now + timedelta(days=60)
    )
    cert, key = tmp_path / "app.crt", tmp_path / "app.key"
    cert.write_bytes(broker.pki.bundle(leaf))
    key.write_bytes(leaf.key_pem())

    added = run("domains-add", name, "--app", "shop", "--cert", str(cert), "--key", str(key),
                addr=broker.addr)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "Serving:         custom" in added.stdout
    assert "Custom certificate:  (serving)" in added.stdout
    table = run("domains", "--app", "shop", addr=broker.addr).stdout
    row = next(line for line in table.splitlines() if line.startswith(name))
    assert "custom" in row
    assert "in 59 days" in row or "in 60 days" in row

    disabled = run("domains-ssl", name, "--disable", "--app", "shop", addr=broker.addr)
    assert disabled.returncode == 0, disabled.stderr
    assert "Custom certificate: none" in disabled.stdout

    again = run("domains-ssl", name, "--cert", str(cert), "--key", str(key), "--json",
                addr=broker.addr)  # fmt: skip
    assert json.loads(again.stdout)["servingSource"] == "CERTIFICATE_SOURCE_CUSTOM"


def test_remove_then_not_found(broker: RunningBroker) -> None:
    name = "gone.cli.example.com"
    run("domains-add", name, "--app", "x", "--no-letsencrypt", addr=broker.addr)
    other = run("domains-remove", name, "--app", "y", addr=broker.addr)
    assert_clean_error(other, 1, "error: FAILED_PRECONDITION")
    assert "DOMAIN_OWNED_BY_OTHER_APP" in other.stderr
    removed = run("domains-remove", name, "--app", "x", addr=broker.addr)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"removed {name} (revision ")
    assert_clean_error(run("status", name, addr=broker.addr), 1, "error: NOT_FOUND")


def _revision_of(addr: str, name: str) -> int:
    return int(json.loads(run("status", name, "--json", addr=addr).stdout)["revision"])


def test_watch_since_prints_later_events_live(broker: RunningBroker) -> None:
    first, second = "w1.cli-watch.example.com", "w2.cli-watch.example.com"
    run("domains-add", first, "--app", "watch", "--no-letsencrypt", addr=broker.addr)
    since = _revision_of(broker.addr, first)
    proc = subprocess.Popen(
        [*CLI, "--addr", broker.addr, "watch", "--since", str(since), "--app", "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = Lines(proc)
        time.sleep(0.3)  # not required for correctness: --since replays anything earlier
        run("domains-add", second, "--app", "watch", "--no-letsencrypt", addr=broker.addr)
        seen = lines.until(lambda line: second in line)
        assert all(first not in line for line in seen)  # nothing at or before --since
        rev = int(seen[-1].split()[0].removeprefix("rev="))
        assert rev > since
        assert "UPDATED" in seen[-1]
        assert "letsencrypt=Disabled" in seen[-1]
        run("domains-remove", second, addr=broker.addr)
        removed = lines.until(lambda line: "REMOVED" in line)
        assert second in removed[-1]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 143
    assert "Traceback" not in err


def test_watch_json_snapshot_is_one_object_per_line(broker: RunningBroker) -> None:
    run("domains-add", "s.cli-watch-json.example.com", "--app", "wj", "--no-letsencrypt",
        addr=broker.addr)  # fmt: skip
    result = run("watch", "--app", "wj", "--json", "--count", "2", addr=broker.addr, timeout=20)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["type"] for e in events] == ["EVENT_TYPE_SNAPSHOT", "EVENT_TYPE_SNAPSHOT_COMPLETE"]
    assert events[0]["domain"]["domain"] == "s.cli-watch-json.example.com"


def test_failed_upload_after_add_says_what_happened(broker: RunningBroker, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    other = broker.pki.leaf("other.example.net", not_before=now - timedelta(days=1),
                            not_after=now + timedelta(days=60))  # fmt: skip
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(broker.pki.bundle(other))
    key.write_bytes(other.key_pem())
    name = "mismatch.cli.example.com"
    result = run("domains-add", name, "--app", "x", "--no-letsencrypt", "--cert", str(cert),
                 "--key", str(key), addr=broker.addr)  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: INVALID_ARGUMENT")
    assert lines[-1] == f"note: {name} was added; its custom certificate was not installed"
    assert run("status", name, addr=broker.addr).returncode == 0


def test_mtls_flags_and_environment(broker_dir: tuple[Path, Path]) -> None:
    workdir, trust = broker_dir
    files = MtlsFiles(workdir / "mtls")
    proc, addr, api = start_mtls_broker(workdir, trust, files)
    try:
        flags = ["--tls-ca", str(files.ca), "--tls-cert", str(api.cert), "--tls-key", str(api.key)]
        added = run(*flags, "domains-add", "tls.cli.example.com", "--app", "t", "--no-letsencrypt",
                    addr=addr)  # fmt: skip
        assert added.returncode == 0, added.stderr
        listed = run(
            "domains",
            addr=addr,
            env={
                "CERTBROKER_CLIENT_CA": str(files.ca),
                "CERTBROKER_CLIENT_CERT": str(api.cert),
                "CERTBROKER_CLIENT_KEY": str(api.key),
            },
        )
        assert listed.returncode == 0, listed.stderr
        assert "tls.cli.example.com" in listed.stdout
        plaintext = run("domains", addr=addr)
        assert_clean_error(plaintext, 1, "error: UNAVAILABLE")
        assert plaintext.stderr.splitlines()[1].startswith("  hint: ")
    finally:
        stop_broker(proc)
