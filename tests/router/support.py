"""Shared helpers for the router tests: real TLS handshakes and raw HTTP from a client's view."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbroker.v1 import broker_pb2, domain_pb2
from tests.pki import Issued, TestPKI


def handshake(
    port: int, server_name: str | None, *, trust_pem: bytes | None = None
) -> x509.Certificate:
    """Connect to ``127.0.0.1:port`` with SNI ``server_name`` and return the leaf served.

    With ``trust_pem`` the chain must validate to those roots for that name
    (``ssl`` with hostname checking, as a browser would); otherwise anything
    is accepted, to look at what is served. Raises ``ssl.SSLError`` on an alert.
    """
    if trust_pem is not None:
        context = ssl.create_default_context(cadata=trust_pem.decode())
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def served(
    port: int, name: str | None, *, trust_pem: bytes | None = None
) -> x509.Certificate:
    """:func:`handshake` off the event loop (the router under test may run on it)."""
    return await asyncio.to_thread(handshake, port, name, trust_pem=trust_pem)


async def served_fingerprint(port: int, name: str) -> str:
    return fingerprint(await served(port, name))


async def refused(port: int, name: str | None) -> str:
    """The alert (as OpenSSL names it) a handshake for ``name`` ends with; fails if it succeeds."""
    try:
        cert = await served(port, name)
    except ssl.SSLError as error:
        return str(error.reason)
    raise AssertionError(f"{name} was served {cert.subject.rfc4514_string()}")


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


async def wait_until(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll a condition (sync or returning an awaitable) until true or the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def serving_event(
    revision: int, kind: int, name: str, leaf: Issued | None, pki: TestPKI
) -> broker_pb2.WatchStatusResponse:
    """A WatchStatus event as the broker sends routers (``leaf`` None: nothing to serve)."""
    event = broker_pb2.WatchEvent(
        revision=revision,
        type=kind,
        domain=domain_pb2.Domain(domain=name, app="app", revision=revision),
    )
    if leaf is not None:
        event.serving.CopyFrom(
            broker_pb2.ServingMaterial(
                source=domain_pb2.CERTIFICATE_SOURCE_CUSTOM,
                chain_pem=pki.bundle(leaf).decode(),
                private_key_pem=leaf.key_pem().decode(),
            )
        )
    return broker_pb2.WatchStatusResponse(event=event)


async def http_exchange(
    port: int, request: bytes, *, ssl_context: ssl.SSLContext | None = None, sni: str | None = None
) -> bytes:
    """Send raw bytes to ``127.0.0.1:port`` (TLS with ``ssl_context``) and read until the close."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ssl_context, server_hostname=sni if ssl_context else None
    )
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: status, headers (lower-case), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return int(lines[0].split(" ")[1]), headers, body


def response_head(response: bytes) -> tuple[int, str]:
    """The status and the raw head (everything before the blank line) of a whole response."""
    head = response.partition(b"\r\n\r\n")[0].decode("latin-1")
    return int(head.split(" ", 2)[1]), head


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True once the other side ends the connection (EOF or reset), False if it stays open."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except (OSError, ssl.SSLError):
        pass  # a reset or a TLS stream cut without close_notify: closed as well
    return True
