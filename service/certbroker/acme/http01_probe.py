"""The doctor's HTTP-01 self-probe: is the broker's answer reachable the way the CA reaches it?

An HTTP-01 validation fails for reasons no DNS check sees: a router that
does not forward ``/.well-known/acme-challenge/`` to the broker, a firewall,
a CDN answering itself. So the probe does what the CA does, with a token of
its own: it publishes a random token in the broker's responder (through
``Http01Responder.add``, so routers that answer challenges themselves from the
watch stream serve it too), resolves the name through the broker's DNS
servers, fetches ``http://NAME/.well-known/acme-challenge/<token>`` from every
address (IPv6 first, as Let's Encrypt prefers it) with ``Host: NAME``, compares
the body with the key authorization, and withdraws the token.

Bounded on purpose (it connects wherever the customer's DNS points): a
deadline per fetch, at most ``MAX_ADDRESSES`` addresses, a cap on the bytes
read, no redirects followed (a redirect is reported, since Let's Encrypt would
follow it and the probe cannot vouch for where it leads), and only addresses
``reachable`` allows: by default public ones (``is_global``), plus the
platform's own targets in the broker. A name pointing at 10.0.0.5 or
169.254.169.254 is reported, not fetched: the CA could not reach it either,
and the broker must not become a way to send requests into its own network. A tiny HTTP/1.1
client over asyncio streams rather than a library: one GET with
``Connection: close`` is all it needs, and every byte read is under its cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from certbroker.acme.http01 import PREFIX

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Addresses probed per name; a name with more is judged on its first ones.
MAX_ADDRESSES = 4
#: Bytes of a response read at most (head and body); a key authorization is ~90.
MAX_RESPONSE_BYTES = 16 * 1024
#: Characters of an unexpected body shown in a report.
_SHOWN = 120
USER_AGENT = "certbroker-doctor"


class Publisher(Protocol):
    """Where the token is published: ``certbroker.acme.http01.Http01Responder``, or
    ``certbroker.acme.shared_challenges.SharedChallenges`` when several brokers share
    a store (the probe's request may reach any of them, as the CA's would)."""

    async def publish(self, token: str, key_authorization: str) -> None: ...

    async def unpublish(self, token: str) -> None: ...


@dataclass(frozen=True)
class Fetch:
    """What one address answered. ``ok`` only for a 200 carrying the key authorization."""

    url: str
    address: str
    ok: bool
    status: int | None = None
    body: str = ""
    location: str = ""
    error: str = ""

    def describe(self) -> str:
        """One line for a report: ``192.0.2.1:80: 404 'not found'`` (the URL is said once)."""
        if self.error:
            return f"{self.address}: {self.error}"
        if self.ok:
            return f"{self.address}: 200 with the expected key authorization"
        if self.location:
            return f"{self.address}: {self.status} redirect to {self.location}"
        shown = f" {self.body!r}" if self.body else " and an empty body"
        return f"{self.address}: {self.status}{shown}"


def _url(name: str, port: int, token: str) -> str:
    authority = name if port == 80 else f"{name}:{port}"
    return f"http://{authority}{PREFIX}{token}"


def _address(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _dechunk(body: bytes) -> bytes | None:
    """A chunked body decoded; ``None`` if malformed or cut off by the read cap."""
    out = b""
    rest = body
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return None
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            return None
        if size == 0:
            return out
        if len(rest) < size + 2:
            return None
        out += rest[:size]
        rest = rest[size + 2 :]


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """``(status, headers, body)`` of one HTTP/1.x response read to its end; ``None`` if garbled."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        decoded = _dechunk(body)
        if decoded is None:
            return None
        body = decoded
    elif headers.get("content-length", "").isdigit():
        body = body[: int(headers["content-length"])]
    return int(parts[1]), headers, body


class Http01Probe:
    """Publishes a throw-away token and fetches it through ``resolve``'s addresses on ``port``.

    ``resolve`` is the broker's own DNS (``DnsChecker.addresses``): the probe
    must reach what the CA would reach, not what this host's resolver says.
    The constructor does no I/O.
    """

    def __init__(
        self,
        publisher: Publisher,
        resolve: Callable[[str], Awaitable[tuple[IPAddress, ...]]],
        *,
        port: int = 80,
        timeout: float = 5.0,
        reachable: Callable[[IPAddress], bool] = lambda ip: ip.is_global,
    ) -> None:
        self._publisher = publisher
        self._resolve = resolve
        self.port = port
        self._timeout = timeout
        self._reachable = reachable

    async def probe(self, name: str) -> tuple[tuple[IPAddress, ...], list[Fetch]]:
        """The addresses ``name`` resolved to, and what each of the first few answered.

        ``DnsLookupError`` (from ``resolve``) when the DNS fails. The token is
        withdrawn whatever happens, cancellation included.
        """
        addresses = await self._resolve(name)
        if not addresses:
            return addresses, []
        token = secrets.token_urlsafe(32)  # 43 characters, like a CA's token
        key_authorization = f"{token}.{secrets.token_urlsafe(32)}"
        await self._publisher.publish(token, key_authorization)
        try:
            fetches = await asyncio.gather(
                *(
                    self._fetch(name, ip, token, key_authorization)
                    for ip in addresses[:MAX_ADDRESSES]
                )
            )
        finally:
            await asyncio.shield(self._publisher.unpublish(token))
        return addresses, list(fetches)

    async def _fetch(self, name: str, ip: IPAddress, token: str, expected: str) -> Fetch:
        url = _url(name, self.port, token)
        address = _address(ip, self.port)

        def failed(error: str) -> Fetch:
            return Fetch(url, address, False, error=error)

        if not self._reachable(ip):
            return failed(
                "not probed: not a public address (Let's Encrypt cannot reach it) "
                "nor a platform target"
            )
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(str(ip), self.port)
                writer.write(
                    f"GET {PREFIX}{token} HTTP/1.1\r\nHost: {name}\r\n"
                    f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode(
                        "ascii"
                    )
                )
                await writer.drain()
                raw = b""
                while len(raw) <= MAX_RESPONSE_BYTES and (
                    data := await reader.read(MAX_RESPONSE_BYTES + 1 - len(raw))
                ):
                    raw += data
        except TimeoutError:
            return failed(f"no answer within {self._timeout:g} s")
        except ConnectionRefusedError:
            return failed("connection refused (nothing listens there)")
        except OSError as error:
            return failed(f"cannot connect ({error.strerror or error})")
        finally:
            if writer is not None:
                writer.close()
        if len(raw) > MAX_RESPONSE_BYTES:
            return failed(f"the answer is longer than {MAX_RESPONSE_BYTES} bytes")
        parsed = parse_response(raw)
        if parsed is None:
            return failed("the answer is not an HTTP/1.1 response")
        status, headers, body = parsed
        text = body.decode("utf-8", errors="replace").strip()
        ok = status == 200 and text == expected
        shown = "" if ok else text[:_SHOWN]
        return Fetch(url, address, ok, status, shown, headers.get("location", "")[:_SHOWN])
