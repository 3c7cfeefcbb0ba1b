"""``--wait`` against a real broker: following WatchStatus to a settled state, or a timeout.

The session broker cannot reach a CA (its ACME directory is a closed port and
its platform targets are unset), so a Let's Encrypt domain stays Pending DNS:
that is the domain a wait times out on, and the one a custom certificate
uploaded from another process settles (NOT_USED) while ``status --wait``
follows it live. tests/integration/test_cli_letsencrypt.py waits for IN_USE
through Pebble.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from certbroker.v1 import domain_pb2
from tests.client.clirun import CLI, Lines, assert_clean_error, cli_env, run, run_async
from tests.client.conftest import RunningBroker
from tests.client.fake import FakeBroker, FakeServer, rich_status


def custom_files(broker: RunningBroker, name: str, folder: Path) -> tuple[str, str]:
    now = datetime.now(UTC)
    leaf = broker.pki.leaf(
        name, not_before=now - timedelta(days=1), not_after=now + timedelta(days=60)
    )
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    cert.write_bytes(broker.pki.bundle(leaf))
    key.write_bytes(leaf.key_pem())
    return str(cert), str(key)


def test_add_with_custom_certificate_waits_until_not_used(
    broker: RunningBroker, tmp_path: Path
) -> None:
    name = "custom.cli-wait.example.com"
    cert, key = custom_files(broker, name, tmp_path)
    result = run("--app", "wait", "domains-add", name, "--cert", cert, "--key", key, "--wait",
                 addr=broker.addr)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"+0:00 {name}: Not used"
    assert lines[-1].startswith("Not used: the custom certificate serves, expires in 59 days")


def test_status_wait_follows_the_domain_live_until_it_settles(
    broker: RunningBroker, tmp_path: Path
) -> None:
    name = "live.cli-wait.example.com"
    assert run("--app", "wait", "domains-add", name, addr=broker.addr).returncode == 0
    proc = subprocess.Popen(
        [*CLI, "--addr", broker.addr, "status", name, "--wait", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        lines = Lines(proc)
        first = lines.until(lambda line: name in line)
        assert first[-1].startswith(f"+0:00 {name}: Pending DNS")
        cert, key = custom_files(broker, name, tmp_path)
        uploaded = run("domains-ssl", name, "--app", "wait", "--cert", cert, "--key", key,
                       addr=broker.addr)  # fmt: skip
        assert uploaded.returncode == 0, uploaded.stderr
        seen = lines.until(lambda line: line.startswith("Not used:"))
        assert any(f"{name}: Not used" in line for line in seen), seen
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=10)


def test_wait_times_out_with_its_own_exit_code(broker: RunningBroker) -> None:
    name = "slow.cli-wait.example.com"
    result = run("--app", "wait", "domains-add", name, "--wait", "--timeout", "2",
                 addr=broker.addr)  # fmt: skip
    assert result.returncode == 124, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"+0:00 {name}: Pending DNS")
    assert lines[-1].startswith(f"gave up waiting after 2 s: {name} is still Pending DNS")
    assert "Traceback" not in result.stderr


def test_wait_json_prints_the_final_status_and_progress_on_stderr(
    broker: RunningBroker, tmp_path: Path
) -> None:
    name = "json.cli-wait.example.com"
    cert, key = custom_files(broker, name, tmp_path)
    result = run("--json", "--app", "wait", "domains-add", name, "--cert", cert, "--key", key,
                 "--wait", addr=broker.addr)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["letsEncryptState"] == "LETS_ENCRYPT_STATE_NOT_USED"
    assert result.stderr.splitlines()[-1].startswith("Not used:")


def test_wait_on_a_disabled_domain_with_nothing_to_serve_stops(broker: RunningBroker) -> None:
    name = "off.cli-wait.example.com"
    result = run("--app", "wait", "domains-add", name, "--no-letsencrypt", "--wait",
                 addr=broker.addr)  # fmt: skip
    assert result.returncode == 1, result
    assert result.stdout.splitlines()[-1].startswith("Disabled (--no-letsencrypt) and nothing")


def test_wait_ends_when_the_domain_is_removed(broker: RunningBroker) -> None:
    name = "gone.cli-wait.example.com"
    assert run("--app", "wait", "domains-add", name, addr=broker.addr).returncode == 0
    proc = subprocess.Popen(
        [*CLI, "--addr", broker.addr, "status", name, "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        lines = Lines(proc)
        lines.until(lambda line: name in line)
        assert run("--app", "wait", "domains-remove", name, addr=broker.addr).returncode == 0
        lines.until(lambda line: line == f"{name} was removed")
        assert proc.wait(timeout=15) == 1
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=10)


def test_renew_asks_for_the_next_attempt_and_never_adds_a_domain(broker: RunningBroker) -> None:
    name = "renew.cli-wait.example.com"
    assert run("--app", "wait", "domains-add", name, addr=broker.addr).returncode == 0
    renewed = run("domains-renew", name, addr=broker.addr)
    assert renewed.returncode == 0, renewed.stderr
    assert renewed.stdout == f"{name}: the next Let's Encrypt attempt runs now\n"

    unknown = run("domains-renew", "nobody.cli-wait.example.com", "--app", "wait",
                  addr=broker.addr)  # fmt: skip
    assert_clean_error(unknown, 1, "error: NOT_FOUND")
    assert_clean_error(run("status", "nobody.cli-wait.example.com", addr=broker.addr), 1,
                       "error: NOT_FOUND")  # fmt: skip

    off = "off-renew.cli-wait.example.com"
    run("--app", "wait", "domains-add", off, "--no-letsencrypt", addr=broker.addr)
    disabled = run("domains-renew", off, addr=broker.addr)
    assert_clean_error(disabled, 1, f"error: {off} has Let's Encrypt disabled")


async def test_renew_refused_too_soon_prints_when_to_try_again() -> None:
    """The broker's RETRY_TOO_SOON refusal (RetryInfo 541 s), as the scripted fake sends it."""
    fake = FakeServer(FakeBroker())
    name = "soon.cli-wait.example.com"
    fake.broker.domains[name] = domain_pb2.Domain(
        domain=name,
        app="shop",
        lets_encrypt_state=domain_pb2.LETS_ENCRYPT_STATE_CREATING,
        retry=domain_pb2.RetryState(attempt=2, last_error_reason="ACME_UNAUTHORIZED"),
    )
    fake.broker.issue_error = rich_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"domain {name} is backing off after 2 failed attempts and was retried on request "
        "recently; the next forced retry is allowed in 541 s",
        reason="RETRY_TOO_SOON",
        retry_after=timedelta(seconds=541),
    )
    await fake.start()
    try:
        result = await run_async("--addr", fake.addr, "domains-renew", name)
    finally:
        await fake.stop()
    assert_clean_error(result, 1, "error: RESOURCE_EXHAUSTED (RETRY_TOO_SOON): domain ")
    assert result.stderr.splitlines()[1:] == ["  try again in 10 min"]
