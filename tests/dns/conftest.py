"""Fixtures for the DNS checks: one shared challtestsrv, a scripted DNS server, dead ports.

challtestsrv never answers NXDOMAIN and cannot set CAA flags, so a tiny
scripted server (real UDP, answers built with dnspython) covers those cases.
Tests share the session's challtestsrv, so each uses names under its own
unique zone (``zone`` fixture) and never touches another test's names.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.infra.challtestsrv import ChallTestSrv


@pytest.fixture(scope="session")
def challtestsrv() -> Iterator[ChallTestSrv]:
    """challtestsrv with no default A/AAAA: a name has only the records a test gives it."""
    with ChallTestSrv.running(default_ipv4="", default_ipv6="") as srv:
        yield srv


@pytest.fixture
def zone() -> str:
    """A zone name no other test uses (the server is shared for the session)."""
    return f"z{uuid.uuid4().hex[:12]}.dnstest"


class ScriptedDns:
    """A UDP DNS server answering from a fixed record list, run in a thread.

    Rules: exact (name, type) match answers; otherwise a CNAME at the name is
    answered alone (no chasing); otherwise NOERROR/empty if the name has any
    record, else NXDOMAIN. Enough to exercise NXDOMAIN and CAA flags.
    """

    host = "127.0.0.1"

    def __init__(self, records: list[str]) -> None:
        self._rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        for line in records:
            owner, rdtype, rdata = line.split(None, 2)
            name = dns.name.from_text(owner)
            rrset = dns.rrset.from_text(name, 0, "IN", rdtype, rdata)
            key = (name, int(rrset.rdtype))
            existing = self._rrsets.setdefault(key, rrset)
            if existing is not rrset:
                for rd in rrset:
                    existing.add(rd)
        self._names = {name for name, _ in self._rrsets}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    def start(self) -> ScriptedDns:
        self._sock.bind((self.host, 0))
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        exact = self._rrsets.get((question.name, int(question.rdtype)))
        cname = self._rrsets.get((question.name, int(dns.rdatatype.CNAME)))
        if exact is not None:
            response.answer.append(exact)
        elif cname is not None:
            response.answer.append(cname)
        elif question.name not in self._names:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue  # garbage on a test socket: nothing to answer
            self._sock.sendto(self._answer(query).to_wire(), peer)


@pytest.fixture
def scripted() -> Iterator[type[ScriptedDns]]:
    """Factory: ``srv = scripted([...]).start()``; started servers stop after the test."""
    started: list[ScriptedDns] = []

    class _Tracked(ScriptedDns):
        def start(self) -> ScriptedDns:
            started.append(self)
            return super().start()

    yield _Tracked
    for srv in started:
        srv.stop()


@pytest.fixture
def closed_port() -> int:
    """A loopback UDP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback UDP port that receives queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])
