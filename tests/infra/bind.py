"""BIND 9 ``named`` on a free loopback port with a generated configuration, for tests.

One process is authoritative for three zones:

- ``test.``: the parent, so a CAA climb from any name below ends at an
  authoritative "no CAA" instead of REFUSED;
- the customer zone (``example.test.``): tests add and remove delegation
  CNAMEs in it by dynamic update, signed with ``customer_key``;
- the broker's challenge zone (``acme.broker.test.``): updatable with
  ``broker_key`` (TXT records only, any name in the zone), as in production;
- optional platform zones (``platform_zones``, e.g. ``osc-fr1.example.test.``,
  a child of the customer zone): the platform's own, where the broker writes
  ``_acme-challenge.<region>`` TXT values directly with ``broker_key``; every
  other name in them answers 127.0.0.1 (a region's DNS wildcard).

Pebble (``-dnsserver``) and the broker's resolver both point at it, so the
delegation the broker checks is the one the CA follows. Recursion is on (for
loopback only) for one reason: an authoritative-only BIND answers a TXT query
for ``_acme-challenge.x.example.test`` with the CNAME alone and does not chase
it into the challenge zone, and Pebble's Go stub resolver does not chase it
either; with recursion BIND restarts the query at the alias target, as Let's
Encrypt's recursive resolvers do. Names outside the three zones are never
asked. Updates are made with dnspython (no ``nsupdate`` needed); ``query``
asks the server without recursion, i.e. what the zone itself holds.

Usage::

    with Bind.running() as bind:
        bind.set_cname("_acme-challenge.w1.example.test", "abc.acme.broker.test")
        bind.write_key_file(tmp / "tsig.key", bind.broker_key)
"""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from tests.infra.ports import free_port
from tests.infra.process import ServerProcess

BINARY = shutil.which("named") or "/usr/sbin/named"


class BindError(RuntimeError):
    """named did not start, or an update/query failed."""


@dataclass(frozen=True)
class BindKey:
    """A TSIG key: ``name``, BIND algorithm name and base64 secret."""

    name: str
    algorithm: str
    secret: str

    @classmethod
    def generate(cls, name: str, algorithm: str = "hmac-sha256") -> BindKey:
        return cls(name, algorithm, base64.b64encode(secrets.token_bytes(32)).decode())

    def bind_text(self) -> str:
        """The key in BIND's format, as ``tsig-keygen`` prints it."""
        return (
            f'key "{self.name}" {{\n\talgorithm {self.algorithm};\n\tsecret "{self.secret}";\n}};\n'
        )

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        name = dns.name.from_text(self.name)
        return {name: dns.tsig.Key(name, self.secret, self.algorithm)}


def _soa_zone(origin: str, extra: str = "") -> str:
    return (
        f"$ORIGIN {origin}.\n$TTL 1\n"
        f"@ IN SOA ns.test. hostmaster.test. 1 60 60 600 1\n"
        f"@ IN NS ns.test.\n{extra}"
    )


class Bind(ServerProcess):
    """One ``named`` process. The constructor has no side effects; ``start()`` launches it."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        customer_zone: str = "example.test",
        challenge_zone: str = "acme.broker.test",
        platform_zones: tuple[str, ...] = (),
        start_timeout: float = 15.0,
    ) -> None:
        self.customer_zone = customer_zone.rstrip(".")
        self.challenge_zone = challenge_zone.rstrip(".")
        self.platform_zones = tuple(z.rstrip(".") for z in platform_zones)
        self.broker_key = BindKey.generate("broker-key")
        self.customer_key = BindKey.generate("customer-key")
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0

    # -- addresses ------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` as Pebble's ``-dnsserver`` flag and CERTBROKER_DNS01_SERVER want it."""
        return f"{self.host}:{self.port}"

    @property
    def _dir(self) -> Path:
        if self._tmp is None:
            raise BindError("not started")
        return Path(self._tmp.name)

    @property
    def log_path(self) -> Path:
        return self._dir / "named.log"

    # -- lifecycle ------------------------------------------------------------

    def _config(self) -> str:
        keys = self.broker_key.bind_text() + self.customer_key.bind_text()
        d = self._dir
        platform = "".join(
            f"""zone "{zone}" {{
    type primary; file "{d}/platform-{i}.zone";
    update-policy {{ grant "{self.broker_key.name}" zonesub TXT; }};
}};
"""
            for i, zone in enumerate(self.platform_zones)
        )
        return f"""
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {self.port} {{ {self.host}; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-recursion {{ 127.0.0.1; }};
    dnssec-validation no;
    notify no;
    allow-transfer {{ none; }};
}};
controls {{ }};
{keys}
zone "test" {{ type primary; file "{d}/test.zone"; }};
zone "{self.customer_zone}" {{
    type primary; file "{d}/customer.zone";
    allow-update {{ key "{self.customer_key.name}"; }};
}};
zone "{self.challenge_zone}" {{
    type primary; file "{d}/challenge.zone";
    update-policy {{ grant "{self.broker_key.name}" zonesub TXT; }};
}};
{platform}"""

    def start(self) -> Bind:
        if self._proc is not None:
            raise BindError("already started")
        self._tmp = tempfile.TemporaryDirectory(prefix="named-")
        d = self._dir
        (d / "test.zone").write_text(_soa_zone("test", "ns IN A 127.0.0.1\n"))
        (d / "customer.zone").write_text(_soa_zone(self.customer_zone, "@ IN A 127.0.0.1\n"))
        (d / "challenge.zone").write_text(_soa_zone(self.challenge_zone))
        for i, zone in enumerate(self.platform_zones):
            (d / f"platform-{i}.zone").write_text(_soa_zone(zone, "* IN A 127.0.0.1\n"))
        last = ""
        for _ in range(3):
            self.port = free_port(self.host, udp_too=True)
            (d / "named.conf").write_text(self._config())
            if self._launch():
                return self
            last = self.log_text()
            self._kill()
        self._cleanup()
        raise BindError(f"named did not start:\n{last}")

    def _launch(self) -> bool:
        args = [BINARY, "-g", "-4", "-n", "1", "-c", str(self._dir / "named.conf")]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                if self.query(self.challenge_zone, "SOA"):
                    return True
            except (OSError, dns.exception.DNSException, BindError):
                pass
            time.sleep(0.05)
        return False

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- keys -----------------------------------------------------------------

    @staticmethod
    def write_key_file(path: Path, key: BindKey) -> Path:
        path.write_text(key.bind_text())
        return path

    # -- queries and updates --------------------------------------------------

    def query(self, name: str, rdtype: str) -> list[str]:
        """The records of ``rdtype`` owned by ``name`` (answer section, CNAMEs not followed)."""
        q = dns.message.make_query(name, rdtype)
        q.flags &= ~dns.flags.RD
        r = dns.query.tcp(q, self.host, port=self.port, timeout=2)
        if r.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise BindError(f"query {name} {rdtype}: {dns.rcode.to_text(r.rcode())}")
        wanted = dns.rdatatype.from_text(rdtype)
        owner = dns.name.from_text(name)
        return [
            rd.to_text()
            for rrset in r.answer
            if rrset.rdtype == wanted and rrset.name == owner
            for rd in rrset
        ]

    def _update(self, zone: str, build: Any, key: BindKey | None = None) -> None:
        key = key or self.customer_key
        upd = dns.update.UpdateMessage(zone, keyring=key.keyring(), keyalgorithm=key.algorithm)
        build(upd)
        r = dns.query.tcp(upd, self.host, port=self.port, timeout=2)
        if r.rcode() != dns.rcode.NOERROR:
            raise BindError(f"update of {zone} failed: {dns.rcode.to_text(r.rcode())}")

    def set_cname(self, name: str, target: str) -> None:
        """Create (or replace) ``name CNAME target`` in the customer zone."""
        tgt = target if target.endswith(".") else target + "."
        self._update(self.customer_zone, lambda u: u.replace(name + ".", 1, "CNAME", tgt))

    def delete_name(self, name: str) -> None:
        """Remove every record at ``name`` in the customer zone."""
        self._update(self.customer_zone, lambda u: u.delete(name + "."))

    def add_a(self, name: str, ip: str = "127.0.0.1") -> None:
        self._update(self.customer_zone, lambda u: u.add(name + ".", 1, "A", ip))
