"""One-line hints for connections that failed before reaching the broker.

gRPC reports every TLS mistake as ``UNAVAILABLE`` with the C core's words
("Socket closed", "CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER"), which
name neither the cause a person can act on nor the flag that fixes it. These
rules read those words together with the TLS settings the CLI used (a
"Socket closed" means something else with and without a client certificate)
and name the flag and environment variable to change. They only suggest: the
error line above a hint still carries gRPC's own text.
"""

from __future__ import annotations

from certbroker_client.client import TlsFiles

__all__ = ["connection_hint"]

_FLAGS_ALL = (
    "--tls-ca, --tls-cert and --tls-key "
    "(env CERTBROKER_CLIENT_CA, CERTBROKER_CLIENT_CERT, CERTBROKER_CLIENT_KEY)"
)
_FLAGS_IDENTITY = "--tls-cert and --tls-key (env CERTBROKER_CLIENT_CERT, CERTBROKER_CLIENT_KEY)"


def _has(text: str, *needles: str) -> bool:
    lowered = text.lower()
    return any(n.lower() in lowered for n in needles)


def connection_hint(details: str, tls: TlsFiles | None) -> str | None:
    """What probably went wrong and which flag fixes it, or None when nothing fits.

    ``details`` is the gRPC status text of an ``UNAVAILABLE`` raised before
    the broker answered; ``tls`` the TLS settings used (None: plaintext).
    """
    if _has(details, "WRONG_VERSION_NUMBER", "HTTP_REQUEST", "record overflow"):
        return (
            "the broker does not speak TLS here (plaintext): leave out --tls-ca/--tls-cert/"
            "--tls-key and unset CERTBROKER_CLIENT_CA/_CERT/_KEY, or check --addr"
        )
    if _has(details, "CERTIFICATE_VERIFY_FAILED", "unable to get local issuer"):
        if tls is not None and tls.ca is not None:
            return (
                f"the broker's certificate is not signed by the CA in {tls.ca}: give the CA "
                "that issued the broker's CERTBROKER_TLS_CERT with --tls-ca "
                "(env CERTBROKER_CLIENT_CA)"
            )
        return (
            "the broker's certificate is not trusted by this system's CAs: give its CA with "
            "--tls-ca (env CERTBROKER_CLIENT_CA)"
        )
    if _has(details, "Hostname Verification", "Peer name", "not in peer certificate"):
        return (
            "the broker's certificate does not name the host in --addr: give one of its "
            "names with --tls-server-name"
        )
    if _has(details, "Socket closed", "Connection reset", "connection closed"):
        if tls is None:
            return (
                "the broker closed the connection at once: it probably requires TLS; give "
                + _FLAGS_ALL
            )
        if tls.cert is None:
            return (
                "the broker closed the TLS connection: it probably requires a client "
                "certificate; give " + _FLAGS_IDENTITY
            )
        return (
            "the broker refused the client certificate: it must be issued by the CA in the "
            "broker's CERTBROKER_TLS_CLIENT_CA, for client authentication, and not expired "
            f"; check {_FLAGS_IDENTITY}"
        )
    return None
