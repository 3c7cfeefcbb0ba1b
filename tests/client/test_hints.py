"""Connection hints: gRPC's words for each TLS mistake, and the flag each hint names.

The detail strings are what grpcio 1.85 reports (seen against a real broker in
tests/client/test_cli_tls.py, which checks the same hints end to end).
"""

from __future__ import annotations

from pathlib import Path

from certbroker_client.client import TlsFiles
from certbroker_client.hints import connection_hint

_CLOSED = (
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"
)
_VERIFY = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake "
    "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
    "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK"
)
_PLAIN = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake "
    "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:"
    "WRONG_VERSION_NUMBER: Invalid certificate verification context: OK"
)
_NAME = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Custom "
    "verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed."
)
CA = TlsFiles(ca=Path("/etc/ca.pem"))
MTLS = TlsFiles(ca=Path("/etc/ca.pem"), cert=Path("/etc/me.pem"), key=Path("/etc/me.key"))


def test_socket_closed_depends_on_what_was_sent() -> None:
    plaintext = connection_hint(_CLOSED, None)
    assert plaintext is not None and "requires TLS" in plaintext and "--tls-ca" in plaintext
    assert "CERTBROKER_CLIENT_CA" in plaintext
    no_identity = connection_hint(_CLOSED, CA)
    assert no_identity is not None and "client certificate" in no_identity
    assert "--tls-cert and --tls-key" in no_identity and "CERTBROKER_CLIENT_CERT" in no_identity
    refused = connection_hint(_CLOSED, MTLS)
    assert refused is not None and "refused the client certificate" in refused
    assert "CERTBROKER_TLS_CLIENT_CA" in refused


def test_untrusted_broker_certificate_names_the_ca_flag() -> None:
    wrong = connection_hint(_VERIFY, CA)
    assert wrong is not None and "not signed by the CA in /etc/ca.pem" in wrong
    assert "--tls-ca" in wrong
    system = connection_hint(_VERIFY, TlsFiles(cert=Path("c"), key=Path("k")))
    assert system is not None and "this system's CAs" in system and "--tls-ca" in system


def test_tls_to_a_plaintext_broker() -> None:
    hint = connection_hint(_PLAIN, CA)
    assert hint is not None and "does not speak TLS" in hint and "CERTBROKER_CLIENT_CA" in hint


def test_name_mismatch_names_server_name_flag() -> None:
    hint = connection_hint(_NAME, MTLS)
    assert hint is not None and "--tls-server-name" in hint


def test_no_hint_when_nothing_fits() -> None:
    refused = "failed to connect to all addresses; last error: Connection refused"
    assert connection_hint(refused, None) is None
