"""Pebble (Let's Encrypt's test CA) on free loopback ports, for tests and benchmarks.

The Debian package ships no certificate for Pebble's HTTPS listener, so each
instance makes a throwaway CA and a ``localhost``/``127.0.0.1`` leaf, and
clients trust that CA through ``ca_bundle_path``. That CA only protects the
ACME API; the certificates Pebble *issues* chain to Pebble's own root, which
changes at every start and is fetched from the management port
(``root_pem()``).

Issuances are counted from Pebble's log (``Issued certificate serial <hex> for
order <url>``, one line per finalized order), which is what tests use to
assert "no duplicate issuance"; new orders likewise (``Added order ... to the
db``), for "no order placed".
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.infra.ports import free_port
from tests.infra.process import ServerProcess

BINARY = shutil.which("pebble") or "/usr/bin/pebble"
_ISSUED_RE = re.compile(r"Issued certificate serial ([0-9a-f]+) for order (\S+)")
_ORDER_RE = re.compile(r"Added order \S+ to the db")


class PebbleError(RuntimeError):
    """Pebble did not start or a management call failed."""


def _write_listener_certs(directory: Path) -> tuple[Path, Path, Path]:
    """Make a throwaway CA and a localhost/127.0.0.1 server cert; return (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certbroker test listener CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "listener-ca.pem"
    cert_path = directory / "listener-cert.pem"
    key_path = directory / "listener-key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


class Pebble(ServerProcess):
    """One Pebble process. The constructor has no side effects; ``start()`` launches it.

    ``http_port`` is where Pebble's validator connects for HTTP-01 (the port of
    the responder under test); ``dns_server`` (``host:port``) is the resolver
    Pebble uses, normally a ``ChallTestSrv``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        http_port: int,
        dns_server: str | None,
        nonce_reject_percent: int = 5,
        authz_reuse_percent: int | None = None,
        extra_env: dict[str, str] | None = None,
        start_timeout: float = 15.0,
        validity_seconds: int | None = None,
    ) -> None:
        self.validity_seconds = validity_seconds
        self.http_port = http_port
        self.dns_server = dns_server
        self.nonce_reject_percent = nonce_reject_percent
        self.authz_reuse_percent = authz_reuse_percent
        self._extra_env = dict(extra_env or {})
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ssl: ssl.SSLContext | None = None
        self.port = 0
        self.mgmt_port = 0
        self._past_log = ""  # logs of earlier runs (``stop_keeping_ports``)

    # -- addresses ------------------------------------------------------------

    @property
    def directory_url(self) -> str:
        return f"https://{self.host}:{self.port}/dir"

    @property
    def mgmt_url(self) -> str:
        return f"https://{self.host}:{self.mgmt_port}"

    @property
    def ca_bundle_path(self) -> str:
        """The CA that signed Pebble's HTTPS listener certificate (for ``verify_ssl``)."""
        return str(self._dir / "listener-ca.pem")

    @property
    def listener_cert_paths(self) -> tuple[str, str]:
        """Pebble's HTTPS certificate and key (127.0.0.1): a loopback proxy may serve them."""
        return str(self._dir / "listener-cert.pem"), str(self._dir / "listener-key.pem")

    @property
    def _dir(self) -> Path:
        if self._tmp is None:
            raise PebbleError("not started")
        return Path(self._tmp.name)

    @property
    def log_path(self) -> Path:
        return self._dir / "pebble.log"

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Pebble:
        if self._proc is not None:
            raise PebbleError("already started")
        self._tmp = tempfile.TemporaryDirectory(prefix="pebble-")
        _, cert, key = _write_listener_certs(self._dir)
        self._ssl = ssl.create_default_context(cafile=self.ca_bundle_path)
        last = ""
        for _ in range(3):
            self.port = free_port(self.host)
            self.mgmt_port = free_port(self.host)
            config = {
                "pebble": {
                    "listenAddress": f"{self.host}:{self.port}",
                    "managementListenAddress": f"{self.host}:{self.mgmt_port}",
                    "certificate": str(cert),
                    "privateKey": str(key),
                    "httpPort": self.http_port,
                    # TLS-ALPN-01 is never offered an answer; any closed port will do.
                    "tlsPort": free_port(self.host),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                    **(
                        {"certificateValidityPeriod": self.validity_seconds}
                        if self.validity_seconds
                        else {}
                    ),
                }
            }
            config_path = self._dir / "pebble-config.json"
            config_path.write_text(json.dumps(config))
            if self._launch(config_path):
                return self
            last = self.log_text()
            self._kill()
        self._cleanup()
        raise PebbleError(f"pebble did not start:\n{last}")

    def stop_keeping_ports(self) -> None:
        """Stop the process (by its PID) but keep its ports, files and listener certificate,
        for ``restart_on_same_ports``: a CA outage as clients see it."""
        self._past_log += self.log_text()
        self._kill()

    def restart_on_same_ports(self) -> Pebble:
        """Start again on the same ports with the same listener certificate.

        Pebble keeps nothing on disk: accounts, orders and authorizations are gone,
        and its issuing root is new (fetch ``root_pem()`` again to verify chains), as
        after a staging CA reset.
        """
        if self._proc is not None:
            raise PebbleError("still running")
        config_path = self._dir / "pebble-config.json"
        for _ in range(3):  # the port may linger a moment after the old process
            if self._launch(config_path):
                return self
            self._kill()
            time.sleep(0.2)
        raise PebbleError(f"pebble did not restart on its ports:\n{self.log_text()}")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PEBBLE_VA_NOSLEEP"] = "1"
        env["PEBBLE_WFE_NONCEREJECT"] = str(self.nonce_reject_percent)
        if self.authz_reuse_percent is not None:
            env["PEBBLE_AUTHZREUSE"] = str(self.authz_reuse_percent)
        env.update(self._extra_env)
        return env

    def _launch(self, config_path: Path) -> bool:
        args = [BINARY, "-config", str(config_path)]
        if self.dns_server:
            args += ["-dnsserver", self.dns_server]
        self.log_path.write_bytes(b"")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                cwd=self._dir,
            )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                self._get(self.directory_url)
                self._get(self.mgmt_url + "/roots/0")
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- management / observation ---------------------------------------------

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=5, context=self._ssl) as resp:
            body: bytes = resp.read()
            return body

    def root_pem(self, index: int = 0) -> bytes:
        """Pebble's root (new at every start) from the management port."""
        return self._get(f"{self.mgmt_url}/roots/{index}")

    def intermediate_pem(self, index: int = 0) -> bytes:
        return self._get(f"{self.mgmt_url}/intermediates/{index}")

    def issued_serials(self) -> list[str]:
        """Hex serials of every certificate Pebble issued so far, in order (from its log)."""
        return [m.group(1) for m in _ISSUED_RE.finditer(self._past_log + self.log_text())]

    def issued_count(self) -> int:
        return len(self.issued_serials())

    def order_count(self) -> int:
        """New orders Pebble accepted so far (``Added order ... to the db`` in its log)."""
        return len(_ORDER_RE.findall(self._past_log + self.log_text()))
