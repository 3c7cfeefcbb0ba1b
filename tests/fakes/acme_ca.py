"""An ACME CA in memory, speaking ``acme.orders.OrderSteps``: orders without a network.

Orders follow RFC 8555's states: authorizations are pending until their
challenge is answered, then valid (or invalid for names in ``refuse``); an
order is ready when all are valid, processing after finalize, valid with a
certificate on the next fetch. Certificates are signed for the CSR's key by
the test PKI. Everything asked is recorded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from acme import challenges, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certbroker.acme.orders import Placed
from certbroker.acme.problems import ERROR_PREFIX, AcmeProblem, from_acme_error
from tests.pki import TestPKI

PKI = TestPKI("Fake Order CA", key_slot=7)


@dataclass
class _Order:
    names: tuple[str, ...]
    authz_urls: list[str]
    status: messages.Status = messages.STATUS_PENDING
    certificate: str | None = None
    csr_pem: bytes = b""


@dataclass
class FakeCa:
    refuse: dict[str, str] = field(default_factory=dict)  # name -> problem code
    already_replaced: set[str] = field(default_factory=set)
    not_ready_once: bool = False  # the first finalize answers orderNotReady
    new_orders: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    finalized: int = 0
    downloads: int = 0
    orders: dict[str, _Order] = field(default_factory=dict)
    authzs: dict[str, messages.Authorization] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _url(self, kind: str) -> str:
        return f"https://ca.test/{kind}/{next(self._ids)}"

    async def new_order(self, names: list[str], csr_pem: bytes, replaces: str) -> Placed:
        if replaces in self.already_replaced:
            raise from_acme_error(
                messages.Error(typ=f"{ERROR_PREFIX}alreadyReplaced", detail="replaced already")
            )
        self.new_orders.append((tuple(names), replaces))
        urls = []
        for name in names:
            url = self._url("authz")
            base = name.removeprefix("*.")
            offered: list[challenges.Challenge] = [challenges.DNS01(token=b"d" * 22)]
            if not name.startswith("*."):
                offered.insert(0, challenges.HTTP01(token=f"t{len(self.authzs)}".encode() * 8))
            self.authzs[url] = messages.Authorization(
                identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=base),
                challenges=[
                    messages.ChallengeBody(
                        chall=c, uri=self._url("chall"), status=messages.STATUS_PENDING
                    )
                    for c in offered
                ],
                status=messages.STATUS_PENDING,
                wildcard=True if name.startswith("*.") else None,
            )
            urls.append(url)
        order_url = self._url("order")
        self.orders[order_url] = _Order(tuple(names), urls)
        return Placed(order_url, self._body(order_url), {u: self.authzs[u] for u in urls})

    def _body(self, url: str) -> messages.Order:
        order = self.orders[url]
        return messages.Order(
            identifiers=[
                messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in order.names
            ],
            status=order.status,
            authorizations=order.authz_urls,
            certificate=order.certificate,
            finalize=url + "/finalize",
        )

    async def fetch_order(self, url: str) -> tuple[messages.Order | None, float | None]:
        order = self.orders.get(url)
        if order is None:
            return None, None
        if order.status == messages.STATUS_PROCESSING:
            order.status = messages.STATUS_VALID
            order.certificate = url + "/cert"
        return self._body(url), None

    async def fetch_authz(self, url: str) -> tuple[messages.Authorization, float | None]:
        return self.authzs[url], None

    async def answer(
        self, challb: messages.ChallengeBody, response: challenges.ChallengeResponse
    ) -> None:
        for url, authz in self.authzs.items():
            if any(c.uri == challb.uri for c in authz.challenges):
                name = str(authz.identifier.value)
                self.answered.append(name)
                code = self.refuse.get(name)
                if code is None:
                    self.authzs[url] = authz.update(status=messages.STATUS_VALID)
                else:
                    error = messages.Error(typ=f"{ERROR_PREFIX}{code}", detail=f"{code} for {name}")
                    failed = challb.update(status=messages.STATUS_INVALID, error=error)
                    self.authzs[url] = authz.update(
                        status=messages.STATUS_INVALID, challenges=[failed]
                    )
                    for order in self.orders.values():
                        if url in order.authz_urls:
                            order.status = messages.STATUS_INVALID

    async def finalize(
        self, url: str, order: messages.Order, csr_pem: bytes
    ) -> messages.Order | None:
        self.finalized += 1
        if self.not_ready_once:
            self.not_ready_once = False
            return None
        stored = self.orders[url]
        if any(self.authzs[a].status != messages.STATUS_VALID for a in stored.authz_urls):
            raise AcmeProblem("ACME_ORDER_NOT_READY", "not ready", retryable=True)
        stored.status = messages.STATUS_PROCESSING
        stored.csr_pem = csr_pem
        return self._body(url)

    async def download(self, cert_url: str) -> str:
        self.downloads += 1
        order = self.orders[cert_url.removesuffix("/cert")]
        csr = x509.load_pem_x509_csr(order.csr_pem)
        now = datetime.now(UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(PKI.int2.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=90))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in order.names]), critical=False
            )
            .sign(PKI.int2.key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return leaf.public_bytes(serialization.Encoding.PEM).decode() + PKI.int2.pem.decode()
