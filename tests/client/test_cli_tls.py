"""mTLS mistakes end in one error line and one hint naming the flag to fix, and no C-core logs.

Against a real mTLS broker (and the plaintext session broker): a CA that did
not sign the broker's certificate, no client certificate, a client
certificate from another CA, plaintext to the TLS broker, TLS to the
plaintext one. gRPC's C core used to print its own lines
(``I1129 ... ssl_transport_security.cc:2563] Handshake failed ...``) beside the
CLI's error; the CLI now sets GRPC_VERBOSITY/GRPC_TRACE before importing grpc.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.client.clirun import assert_clean_error, run
from tests.client.conftest import RunningBroker, start_mtls_broker, stop_broker
from tests.pki import TestPKI
from tests.tls import Identity, MtlsFiles

# What the C core's log lines look like (absl: severity letter, MMDD, time, thread, file:line]).
C_CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|\.cc:\d+\]|chttp2|ssl_transport_security")


@dataclass(frozen=True)
class TlsBroker:
    addr: str
    files: MtlsFiles
    client: Identity
    stranger: MtlsFiles


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    workdir = tmp_path_factory.mktemp("tls-broker")
    files = MtlsFiles(workdir / "mtls")
    stranger = MtlsFiles(workdir / "stranger", ca_name="someone else's CA")
    trust = workdir / "trust.pem"
    trust.write_bytes(TestPKI(prefix="TLS").root.pem)
    proc, addr, client = start_mtls_broker(workdir, trust, files)
    try:
        yield TlsBroker(addr, files, client, stranger)
    finally:
        stop_broker(proc)


def assert_hint(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert_clean_error(result, 1, "error: UNAVAILABLE: cannot reach the broker at ")
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[1].startswith("  hint: "), result.stderr
    for word in words:
        assert word in lines[1], (word, lines[1])
    assert not any(C_CORE_LINE.search(line) for line in lines[1:]), result.stderr


def test_the_right_files_work(tls_broker: TlsBroker) -> None:
    t = tls_broker
    ok = run("--tls-ca", str(t.files.ca), "--tls-cert", str(t.client.cert), "--tls-key",
             str(t.client.key), "domains", addr=t.addr)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""


def test_wrong_ca(tls_broker: TlsBroker) -> None:
    t = tls_broker
    result = run("--tls-ca", str(t.stranger.ca), "--tls-cert", str(t.client.cert), "--tls-key",
                 str(t.client.key), "domains", addr=t.addr)  # fmt: skip
    assert_hint(result, "not signed by the CA in", "--tls-ca", "CERTBROKER_CLIENT_CA")


def test_no_client_certificate(tls_broker: TlsBroker) -> None:
    result = run("--tls-ca", str(tls_broker.files.ca), "domains", addr=tls_broker.addr)
    assert_hint(result, "requires a client certificate", "--tls-cert", "CERTBROKER_CLIENT_CERT")


def test_client_certificate_from_another_ca(tls_broker: TlsBroker) -> None:
    other = tls_broker.stranger.issue("intruder")
    result = run("--tls-ca", str(tls_broker.files.ca), "--tls-cert", str(other.cert), "--tls-key",
                 str(other.key), "domains", addr=tls_broker.addr)  # fmt: skip
    assert_hint(result, "refused the client certificate", "CERTBROKER_TLS_CLIENT_CA")


def test_plaintext_to_a_tls_broker(tls_broker: TlsBroker) -> None:
    result = run("domains", addr=tls_broker.addr)
    assert_hint(result, "requires TLS", "--tls-ca", "CERTBROKER_CLIENT_KEY")


def test_watch_says_so_too_instead_of_retrying_silently(tls_broker: TlsBroker) -> None:
    result = run("watch", addr=tls_broker.addr, timeout=20)
    assert_hint(result, "requires TLS")


def test_tls_to_a_plaintext_broker(broker: RunningBroker, tls_broker: TlsBroker) -> None:
    result = run("--tls-ca", str(tls_broker.files.ca), "domains", addr=broker.addr)
    assert_hint(result, "does not speak TLS", "--tls-ca")


def test_c_core_lines_only_when_the_user_asks_for_them(tls_broker: TlsBroker) -> None:
    argv = ["--tls-ca", str(tls_broker.stranger.ca), "domains"]
    quiet = run(*argv, addr=tls_broker.addr)
    assert quiet.returncode == 1
    assert not any(C_CORE_LINE.search(line) for line in quiet.stderr.splitlines()), quiet.stderr
    # The same failure with the user's own verbosity: the C core speaks (so the check above
    # would have seen its lines), and the user's setting is kept.
    loud = run(*argv, addr=tls_broker.addr, env={"GRPC_VERBOSITY": "INFO"})
    assert any(C_CORE_LINE.search(line) for line in loud.stderr.splitlines()), loud.stderr
