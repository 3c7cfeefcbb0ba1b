"""UploadCustom / DeleteCustom through the real server, the generated stubs and the test PKI.

One broker serves the whole module (its clock never moves here; the clock-moving
fallback tests are in tests/integration/test_custom.py). It trusts the private
test roots through ``trust_bundle`` (``CERTBROKER_TRUST_BUNDLE``), a file this
module writes. Each test works on its own domain, so the global revision
tells whether anything at all was written.

Opted-in domains have no ACME directory here: the scheduler parks them once with
NOT_CONFIGURED (a single write, then nothing until a day passes on the frozen
clock), so tests wait for that before taking the "before" picture.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certbroker.clock import FakeClock
from certbroker.model import Material, Source
from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from certbroker.x509 import MAX_INPUT_BYTES, Reason
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.integration.lab import wait_status
from tests.pki import (
    NOW,
    Issued,
    KeyFormat,
    KeyKind,
    TestPKI,
    cached_key,
    make_ca,
    make_leaf,
    pem_bundle,
    pkcs7_bundle,
)
from tests.rpc import details
from tests.x509.test_fuzz import mutated

PKI = TestPKI()
RSA_PKI = TestPKI("Rsa", key_slot=2, root_key="rsa2048")
OTHER_PKI = TestPKI("Other", key_slot=1)  # not trusted by the broker

NOT_USED = domain_pb2.LETS_ENCRYPT_STATE_NOT_USED
DISABLED = domain_pb2.LETS_ENCRYPT_STATE_DISABLED
CUSTOM = domain_pb2.CERTIFICATE_SOURCE_CUSTOM
NONE = domain_pb2.CERTIFICATE_SOURCE_NONE

_numbers = itertools.count(1)


def trust_file(directory: Path, *pkis: TestPKI) -> Path:
    """The PEM file ``CERTBROKER_TRUST_BUNDLE`` points at: the private test roots."""
    path = directory / "trust.pem"
    path.write_bytes(b"".join(p.root.pem for p in pkis))
    return path


def chain_certs(chain_pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(chain_pem.encode())


def parked(domain: domain_pb2.Domain) -> bool:
    """The scheduler has looked at an opted-in domain and parked it (no ACME directory)."""
    return domain.retry.last_error_reason == "NOT_CONFIGURED"


@dataclass
class Env:
    broker: BrokerHandle
    clock: FakeClock

    @property
    def stub(self) -> broker_pb2_grpc.CertificateBrokerServiceStub:
        return self.broker.stub

    @staticmethod
    def name(label: str = "d") -> str:
        return f"{label}{next(_numbers)}.example.com"

    async def add(self, name: str, *, letsencrypt: bool = True) -> domain_pb2.Domain:
        reply = await self.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain=name, app="shop", disable_letsencrypt=not letsencrypt
            )
        )
        if not letsencrypt:
            return reply.domain
        return await wait_status(self.stub, reply.domain.domain, parked, timeout=10)

    async def status(self, name: str) -> domain_pb2.Domain:
        return (await self.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))).domain

    async def revision(self) -> int:
        return await self.broker.running.store.current_revision()

    async def upload(self, name: str, certificate: bytes, key: bytes) -> domain_pb2.Domain:
        reply = await self.stub.UploadCustom(
            broker_pb2.UploadCustomRequest(domain=name, certificate=certificate, private_key=key)
        )
        return reply.domain

    async def served(self, name: str) -> Material | None:
        """What a router gets for ``name`` (the material WatchStatus attaches over mTLS).

        The plaintext test broker refuses keys over the wire, so this asks the use
        case the servicer calls, with the record as stored.
        """
        running = self.broker.running
        record = await running.store.get_domain(name)
        assert record is not None
        return await running.broker.serving_material(record)


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("upload")
    # The fuzz test below sends hundreds of refused uploads back to back on purpose:
    # no bad-request budget (certbroker.api.fairness) for this module's one client.
    settings_ = broker_settings(
        tmp, trust_bundle=str(trust_file(tmp, PKI, RSA_PKI)), bad_requests_per_peer=None
    )
    clock = FakeClock(NOW)
    async with started_broker(settings_, clock) as broker:
        yield Env(broker, clock)


# -- every good form ----------------------------------------------------------------------

Good = tuple[bytes, bytes, list[Issued]]  # certificate, key, expected stored chain


def _good_pem_order(name: str, order: tuple[int, ...]) -> Good:
    leaf = PKI.leaf(name)
    root = len(order) == 4
    return PKI.bundle(leaf, root=root, order=order), leaf.key_pem(), PKI.chain(leaf)


def _good(form: str, name: str) -> Good:
    """Build the upload for ``form`` and the chain the broker must store for it."""
    if form.startswith("order-"):
        return _good_pem_order(name, tuple(int(c) for c in form.removeprefix("order-")))
    if form.startswith("key-"):
        _, kind, fmt, encoding = form.split("-")
        leaf = PKI.leaf(name, key=kind)  # type: ignore[arg-type]
        key_format: KeyFormat = "pkcs8" if fmt == "pkcs8" else "traditional"
        key = leaf.key_pem(key_format) if encoding == "pem" else leaf.key_der(key_format)
        return PKI.bundle(leaf), key, PKI.chain(leaf)
    leaf = PKI.leaf(name)
    if form == "junk":
        return (
            PKI.bundle(leaf, root=True, order=(2, 0, 3, 1), junk=True),
            leaf.key_pem(),
            [leaf, PKI.int2, PKI.int1],
        )
    if form == "crlf-junk":
        bundle = PKI.bundle(leaf, root=True, order=(3, 1, 0, 2), junk=True, crlf=True)
        return bundle, leaf.key_pem().replace(b"\n", b"\r\n"), PKI.chain(leaf)
    if form == "duplicates-and-unrelated-ca":
        bundle = pem_bundle([PKI.int1, leaf, OTHER_PKI.int2, PKI.int2, leaf, PKI.int1])
        return bundle, leaf.key_pem(), PKI.chain(leaf)
    if form == "der-leaf-under-root":
        direct = PKI.leaf(name, issuer=PKI.root)
        return direct.der, direct.key_der("traditional"), [direct]
    if form.startswith("p7b-"):
        _, encoding, *rest = form.split("-")
        items = [PKI.int1, leaf, PKI.int2] + ([PKI.root] if rest else [])
        return (
            pkcs7_bundle(items, "pem" if encoding == "pem" else "der"),
            leaf.key_pem(),
            (PKI.chain(leaf)),
        )
    if form == "ec-parameters-and-cert-in-key-file":
        params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
        return PKI.bundle(leaf), params + leaf.key_pem("traditional") + leaf.pem, PKI.chain(leaf)
    if form == "rsa-hierarchy":
        rsa_leaf = RSA_PKI.leaf(name, key=cached_key("rsa2048", 7))
        return (
            RSA_PKI.bundle(rsa_leaf, root=True, order=(3, 2, 1, 0)),
            rsa_leaf.key_pem("traditional"),
            RSA_PKI.chain(rsa_leaf),
        )
    if form == "several-sans":
        many = PKI.leaf("a.example.org", name, "b.example.net")
        return PKI.bundle(many), many.key_pem(), PKI.chain(many)
    raise AssertionError(form)


GOOD_FORMS = [
    *(f"order-{''.join(map(str, p))}" for p in itertools.permutations(range(3))),
    *(f"order-{''.join(map(str, p))}" for p in itertools.permutations(range(4))),
    "junk",
    "crlf-junk",
    "duplicates-and-unrelated-ca",
    "der-leaf-under-root",
    "p7b-pem",
    "p7b-der",
    "p7b-pem-root",
    "p7b-der-root",
    *(
        f"key-{kind}-{fmt}-{enc}"
        for kind in ("p256", "p384", "rsa2048")
        for fmt in ("pkcs8", "sec1")
        for enc in ("pem", "der")
    ),
    "ec-parameters-and-cert-in-key-file",
    "rsa-hierarchy",
    "several-sans",
]


async def _assert_stored(env: Env, name: str, chain: list[Issued], got: domain_pb2.Domain) -> None:
    """The reply, GetStatus and the served material all hold the canonical chain."""
    status = await env.status(name)
    assert status == got
    custom = status.custom_certificate
    assert [c for c in chain_certs(custom.chain_pem)] == [i.cert for i in chain]
    assert custom.chain_pem == "".join(i.pem.decode() for i in chain)  # leaf first, no root
    leaf = chain[0].cert
    assert custom.sha256_fingerprint == leaf.fingerprint(hashes.SHA256()).hex()
    assert custom.serial == format(leaf.serial_number, "x")
    assert custom.not_after.ToDatetime(UTC) == leaf.not_valid_after_utc
    assert custom.days_left == (leaf.not_valid_after_utc - NOW).days
    assert status.serving_source == CUSTOM
    served = await env.served(name)
    assert served is not None
    assert served.source is Source.CUSTOM
    assert served.chain_pem == custom.chain_pem
    assert served.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, plain
    key = serialization.load_pem_private_key(served.private_key_pem.encode(), None)
    assert key.public_key() == leaf.public_key()


@pytest.mark.parametrize("form", GOOD_FORMS)
async def test_every_good_form_is_stored_leaf_first_without_root(env: Env, form: str) -> None:
    name = env.name("good")
    await env.add(name)
    certificate, key, chain = _good(form, name)
    before = await env.revision()
    got = await env.upload(name, certificate, key)
    assert got.lets_encrypt_state == NOT_USED
    assert got.revision == before + 1  # one write: certificate and state together
    assert await env.revision() == before + 1
    assert not got.custom_certificate_expiring  # 60 days left
    await _assert_stored(env, name, chain, got)


async def test_opted_out_domain_serves_custom_and_stays_disabled(env: Env) -> None:
    name = env.name("optout")
    added = await env.add(name, letsencrypt=False)
    assert (added.serving_source, added.lets_encrypt_state) == (NONE, DISABLED)
    certificate, key, chain = _good("order-201", name)
    got = await env.upload(name, certificate, key)
    assert (got.serving_source, got.lets_encrypt_state) == (CUSTOM, DISABLED)
    await _assert_stored(env, name, chain, got)


@pytest.mark.parametrize(
    ("domain", "sans"),
    [
        ("a.{base}", ("*.{base}",)),  # one extra label under a wildcard
        ("*.{base}", ("*.{base}",)),  # a wildcard domain with the same wildcard
        ("{base}", ("{base}", "*.{base}")),
    ],
)
async def test_wildcard_coverage(env: Env, domain: str, sans: tuple[str, ...]) -> None:
    base = env.name("wild")
    name = domain.format(base=base)
    await env.add(name, letsencrypt=False)
    leaf = PKI.leaf(*(s.format(base=base) for s in sans))
    got = await env.upload(name, PKI.bundle(leaf), leaf.key_pem())
    assert got.serving_source == CUSTOM
    assert list(got.custom_certificate.sans) == [s.format(base=base) for s in sans]


async def test_domain_is_normalised_before_upload(env: Env) -> None:
    name = env.name("norm")
    await env.add(name, letsencrypt=False)
    leaf = PKI.leaf(name)
    got = await env.upload(f"  {name.upper()}. ", PKI.bundle(leaf), leaf.key_pem())
    assert got.domain == name
    assert got.serving_source == CUSTOM


# -- idempotence, unknown domains -------------------------------------------------------


async def test_same_bundle_twice_is_a_no_op(env: Env) -> None:
    name = env.name("twice")
    await env.add(name)
    leaf = PKI.leaf(name)
    first = await env.upload(name, PKI.bundle(leaf), leaf.key_pem())
    revision = await env.revision()
    # the same certificate in another form and order is still the same bundle
    for certificate, key in [
        (PKI.bundle(leaf), leaf.key_pem()),
        (PKI.bundle(leaf, root=True, order=(3, 2, 1, 0), junk=True), leaf.key_der("traditional")),
        (pkcs7_bundle([leaf, PKI.int1, PKI.int2], "der"), leaf.key_pem("traditional")),
    ]:
        again = await env.upload(name, certificate, key)
        assert again == first
    assert await env.revision() == revision


async def test_same_bundle_concurrently_is_written_once(env: Env) -> None:
    name = env.name("race")
    await env.add(name)
    leaf = PKI.leaf(name)
    before = await env.revision()
    replies = await asyncio.gather(
        *(env.upload(name, PKI.bundle(leaf), leaf.key_pem()) for _ in range(8))
    )
    assert {r.revision for r in replies} == {before + 1}
    assert await env.revision() == before + 1


async def test_a_new_certificate_replaces_the_old_one(env: Env) -> None:
    name = env.name("replace")
    await env.add(name)
    old = PKI.leaf(name)
    first = await env.upload(name, PKI.bundle(old), old.key_pem())
    new = PKI.leaf(name, not_after=NOW + timedelta(days=90))
    second = await env.upload(name, PKI.bundle(new), new.key_pem())
    assert second.revision == first.revision + 1
    assert second.custom_certificate.serial == format(new.cert.serial_number, "x")
    assert second.custom_certificate.days_left == 90
    assert (second.serving_source, second.lets_encrypt_state) == (CUSTOM, NOT_USED)


async def test_unknown_domain_is_not_found_and_writes_nothing(env: Env) -> None:
    name = env.name("unknown")
    leaf = PKI.leaf(name)
    before = await env.revision()
    for certificate in (PKI.bundle(leaf), b"garbage"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.upload(name, certificate, leaf.key_pem())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert details(caught.value)[0] == "DOMAIN_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.stub.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await env.revision() == before


async def test_invalid_domain_name_is_a_domain_field_violation(env: Env) -> None:
    leaf = PKI.leaf("www.example.com")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.upload("bad_name..example.com", PKI.bundle(leaf), leaf.key_pem())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, violations = details(caught.value)
    assert reason == "DOMAIN_INVALID"
    assert violations and all(field == "domain" for field, _ in violations)


async def test_delete_custom_without_one_is_a_no_op(env: Env) -> None:
    name = env.name("nodelete")
    added = await env.add(name)
    reply = await env.stub.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name))
    assert reply.domain == added


# -- every bad form ---------------------------------------------------------------------

Bad = tuple[bytes, bytes]  # certificate, key


def _encrypted(name: str, form: str) -> Bad:
    leaf = PKI.leaf(name, key="rsa2048" if "rsa" in form else "p256")
    if form.endswith("pkcs8-pem"):
        key = leaf.key_pem("pkcs8", password=b"secret")
    elif form.endswith("traditional-pem"):
        key = leaf.key_pem("traditional", password=b"secret")
    else:
        key = leaf.key_der("pkcs8", password=b"secret")
    return PKI.bundle(leaf), key


def _broken_signature(name: str) -> Bad:
    leaf = PKI.leaf(name)
    der = bytearray(leaf.der)
    der[-5] ^= 0x01
    broken = x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)
    return broken + PKI.int2.pem + PKI.int1.pem, leaf.key_pem()


def _self_signed(name: str) -> Bad:
    key = cached_key("p256", 60)
    fake_issuer = Issued(make_ca(name, key).cert, key)
    leaf = make_leaf(fake_issuer, [name], key, common_name=name)
    return leaf.pem, leaf.key_pem()


def _expired_intermediate(name: str) -> Bad:
    old = make_ca(
        "Old Intermediate", cached_key("p256", 50), PKI.int1, not_after=NOW - timedelta(days=1)
    )
    leaf = make_leaf(old, [name], cached_key("p256", 9), not_after=NOW + timedelta(days=10))
    return pem_bundle([leaf, old, PKI.int1]), leaf.key_pem()


def _weak_intermediate(name: str) -> Bad:
    weak = make_ca("Weak Intermediate", cached_key("rsa1024"), PKI.int1)
    leaf = PKI.leaf(name, issuer=weak)
    return pem_bundle([leaf, weak, PKI.int1]), leaf.key_pem()


def _csr(name: str) -> Bad:
    leaf = PKI.leaf(name)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(leaf.cert.subject)
        .sign(leaf.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return csr.public_bytes(serialization.Encoding.PEM), leaf.key_pem()


def _leaf_bundle(name: str, kind: KeyKind = "p256", **kwargs: object) -> Bad:
    leaf = PKI.leaf(name, key=kind, **kwargs)
    return PKI.bundle(leaf), leaf.key_pem()


def _cut(data: bytes, marker: bytes) -> bytes:
    return data[: data.rindex(marker)]


BadCase = tuple[str, Callable[[str], Bad], str, Reason, tuple[str, ...]]


def _b(name: str) -> Issued:
    return PKI.leaf(name)


BAD_CASES: list[BadCase] = [
    (
        "empty",
        lambda n: (b"", _b(n).key_pem()),
        "certificate",
        Reason.CERT_NOT_PEM_OR_DER,
        ("empty",),
    ),
    (
        "text",
        lambda n: (b"hello, this is my certificate", _b(n).key_pem()),
        "certificate",
        Reason.CERT_NOT_PEM_OR_DER,
        ("neither PEM",),
    ),
    (
        "pkcs12-like-binary",
        lambda n: (b"\x30\x03\x02\x01\x00", _b(n).key_pem()),
        "certificate",
        Reason.CERT_NOT_PEM_OR_DER,
        ("PKCS#12",),
    ),
    (
        "key-in-cert-field",
        lambda n: (_b(n).key_pem(), _b(n).key_pem()),
        "certificate",
        Reason.CERT_NOT_PEM_OR_DER,
        ("private key",),
    ),
    ("csr", _csr, "certificate", Reason.CERT_NOT_PEM_OR_DER, ("CSR",)),
    (
        "truncated-pem",
        lambda n: (_cut(PKI.bundle(_b(n)), b"-----END"), _b(n).key_pem()),
        "certificate",
        Reason.CERT_TRUNCATED,
        ("PEM block 3", "truncated"),
    ),
    (
        "truncated-der",
        lambda n: (_b(n).der[:-40], _b(n).key_pem()),
        "certificate",
        Reason.CERT_TRUNCATED,
        ("truncated",),
    ),
    (
        "truncated-p7b",
        lambda n: (pkcs7_bundle([_b(n), PKI.int2], "der")[:-30], _b(n).key_pem()),
        "certificate",
        Reason.CERT_TRUNCATED,
        (),
    ),
    (
        "pem-of-garbage",
        lambda n: (
            b"-----BEGIN CERTIFICATE-----\nMAUBAQEBAQ==\n-----END CERTIFICATE-----\n",
            _b(n).key_pem(),
        ),
        "certificate",
        Reason.CERT_MALFORMED,
        ("PEM block 1",),
    ),
    (
        "too-large-certificate",
        lambda n: (PKI.bundle(_b(n)) + b"x" * MAX_INPUT_BYTES, _b(n).key_pem()),
        "certificate",
        Reason.INPUT_TOO_LARGE,
        ("65536",),
    ),
    (
        "too-large-key",
        lambda n: (PKI.bundle(_b(n)), b"x" * (MAX_INPUT_BYTES + 1)),
        "private_key",
        Reason.INPUT_TOO_LARGE,
        ("65536",),
    ),
    (
        "two-leaves",
        lambda n: (
            pem_bundle(
                [
                    _b(n),
                    PKI.leaf("other.example.com", key=cached_key("p256", 20)),
                    PKI.int2,
                    PKI.int1,
                ]
            ),
            _b(n).key_pem(),
        ),
        "certificate",
        Reason.CERT_MULTIPLE_LEAVES,
        ("2 server certificates",),
    ),
    (
        "only-intermediates",
        lambda n: (pem_bundle([PKI.int1, PKI.int2]), _b(n).key_pem()),
        "certificate",
        Reason.CERT_LEAF_IS_CA,
        ("CA:TRUE",),
    ),
    (
        "ca-as-leaf",
        lambda n: _leaf_bundle(n, ca=True),
        "certificate",
        Reason.CERT_LEAF_IS_CA,
        ("CA:TRUE",),
    ),
    (
        "key-mismatch",
        lambda n: (PKI.bundle(_b(n)), Issued(_b(n).cert, cached_key("p256", 40)).key_pem()),
        "private_key",
        Reason.KEY_MISMATCH,
        ("does not belong",),
    ),
    (
        "key-of-other-algorithm",
        lambda n: (PKI.bundle(_b(n)), Issued(_b(n).cert, cached_key("rsa2048")).key_der()),
        "private_key",
        Reason.KEY_MISMATCH,
        (),
    ),
    *(
        (
            f"encrypted-{kind}-{form}",
            lambda n, f=f"{kind}-{form}": _encrypted(n, f),
            "private_key",
            Reason.KEY_ENCRYPTED,
            ("decrypt", "openssl pkey"),
        )
        for kind in ("p256", "rsa")
        for form in ("pkcs8-pem", "traditional-pem", "pkcs8-der")
    ),
    (
        "truncated-key",
        lambda n: (PKI.bundle(_b(n)), _cut(_b(n).key_pem(), b"-----END")),
        "private_key",
        Reason.KEY_TRUNCATED,
        (),
    ),
    (
        "truncated-der-key",
        lambda n: (PKI.bundle(_b(n)), _b(n).key_der()[:-10]),
        "private_key",
        Reason.KEY_TRUNCATED,
        (),
    ),
    (
        "empty-key",
        lambda n: (PKI.bundle(_b(n)), b""),
        "private_key",
        Reason.KEY_INVALID,
        ("empty",),
    ),
    (
        "garbage-key",
        lambda n: (PKI.bundle(_b(n)), b"not a key"),
        "private_key",
        Reason.KEY_INVALID,
        ("neither PEM",),
    ),
    (
        "public-key",
        lambda n: (
            PKI.bundle(_b(n)),
            _b(n)
            .key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ),
        "private_key",
        Reason.KEY_INVALID,
        ("public key",),
    ),
    (
        "certificate-in-key-field",
        lambda n: (PKI.bundle(_b(n)), _b(n).pem),
        "private_key",
        Reason.KEY_INVALID,
        ("certificate",),
    ),
    (
        "ed25519",
        lambda n: _leaf_bundle(n, "ed25519"),
        "private_key",
        Reason.KEY_UNSUPPORTED,
        ("Ed25519",),
    ),
    (
        "other-name",
        lambda n: _leaf_bundle("other-" + n),
        "certificate",
        Reason.CERT_NAME_MISMATCH,
        ("does not cover",),
    ),
    (
        "wildcard-does-not-cover-bare-name",
        lambda n: _leaf_bundle("*." + n),
        "certificate",
        Reason.CERT_NAME_MISMATCH,
        ("does not cover", "exactly one extra label"),
    ),
    (
        "wildcard-does-not-cover-two-labels",
        lambda n: _leaf_bundle("*.example.com"),
        "certificate",
        Reason.CERT_NAME_MISMATCH,
        ("does not cover", "*.example.com"),
    ),
    (
        "no-san",
        lambda n: _leaf_bundle(n, with_san=False),
        "certificate",
        Reason.CERT_NAME_MISMATCH,
        ("Common Name",),
    ),
    (
        "expired",
        lambda n: _leaf_bundle(
            n, not_before=NOW - timedelta(days=90), not_after=NOW - timedelta(seconds=1)
        ),
        "certificate",
        Reason.CERT_EXPIRED,
        ("expired on", "renew"),
    ),
    (
        "not-yet-valid",
        lambda n: _leaf_bundle(n, not_before=NOW + timedelta(hours=1)),
        "certificate",
        Reason.CERT_NOT_YET_VALID,
        ("not valid before",),
    ),
    (
        "expired-intermediate",
        _expired_intermediate,
        "certificate",
        Reason.CERT_EXPIRED,
        ("intermediate", "Old Intermediate"),
    ),
    (
        "leaf-only",
        lambda n: (_b(n).pem, _b(n).key_pem()),
        "certificate",
        Reason.CHAIN_INTERMEDIATE_MISSING,
        ("Intermediate CA 2", "intermediate"),
    ),
    (
        "der-leaf-only",
        lambda n: (_b(n).der, _b(n).key_der()),
        "certificate",
        Reason.CHAIN_INTERMEDIATE_MISSING,
        ("Intermediate CA 2",),
    ),
    (
        "upper-intermediate-missing",
        lambda n: (pem_bundle([_b(n), PKI.int2, PKI.root]), _b(n).key_pem()),
        "certificate",
        Reason.CHAIN_INTERMEDIATE_MISSING,
        ("Intermediate CA 1",),
    ),
    (
        "untrusted-root",
        lambda n: (OTHER_PKI.bundle(OTHER_PKI.leaf(n), root=True), OTHER_PKI.leaf(n).key_pem()),
        "certificate",
        Reason.CHAIN_UNTRUSTED,
        ("Other Root CA", "not a trusted"),
    ),
    ("self-signed", _self_signed, "certificate", Reason.CHAIN_UNTRUSTED, ("self-signed",)),
    ("broken-signature", _broken_signature, "certificate", Reason.CHAIN_INVALID, ()),
    (
        "rsa-1024-leaf",
        lambda n: _leaf_bundle(n, "rsa1024"),
        "certificate",
        Reason.KEY_TOO_WEAK,
        ("1024-bit", "2048"),
    ),
    (
        "rsa-1024-intermediate",
        _weak_intermediate,
        "certificate",
        Reason.KEY_TOO_WEAK,
        ("Weak Intermediate",),
    ),
    (
        "sha1-leaf",
        lambda n: (pem_bundle([(s := PKI.sha1_leaf(n))[0], *s[1]]), s[0].key_pem()),
        "certificate",
        Reason.CERT_SHA1_SIGNATURE,
        ("SHA-1",),
    ),
    (
        "sha1-intermediate",
        lambda n: (pem_bundle([(s := PKI.sha1_intermediate_leaf(n))[0], *s[1]]), s[0].key_pem()),
        "certificate",
        Reason.CERT_SHA1_SIGNATURE,
        ("SHA-1", "SHA1 Intermediate"),
    ),
]


@pytest.mark.parametrize("installed", [False, True], ids=["fresh", "over-custom"])
@pytest.mark.parametrize(
    ("build", "field", "reason", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_CASES],
)
async def test_every_bad_upload_is_refused_and_writes_nothing(
    env: Env,
    build: Callable[[str], Bad],
    field: str,
    reason: Reason,
    fragments: tuple[str, ...],
    installed: bool,
) -> None:
    name = "x." + env.name("bad")  # two labels below example.com: see the wildcard cases
    await env.add(name)
    if installed:  # a bad upload must not disturb the custom certificate already serving
        good = PKI.leaf(name)
        await env.upload(name, PKI.bundle(good), good.key_pem())
    certificate, key = build(name)
    before_status = await env.status(name)
    before = await env.revision()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.upload(name, certificate, key)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    got_reason, violations = details(error)
    assert got_reason == reason.value, violations
    assert len(violations) == 1
    got_field, description = violations[0]
    assert got_field == field
    for fragment in fragments:
        assert fragment in description, description
    assert await env.revision() == before
    assert await env.status(name) == before_status
    expected_source = CUSTOM if installed else NONE
    assert before_status.serving_source == expected_source


# -- arbitrary and mutated bytes ---------------------------------------------------------

FUZZ_NAME = "fuzz.example.com"
_FUZZ_LEAF = PKI.leaf(FUZZ_NAME)
_FUZZ_FORMS = {
    "pem": PKI.bundle(_FUZZ_LEAF, root=True, order=(1, 0, 3, 2), junk=True),
    "der": _FUZZ_LEAF.der,
    "p7b-der": pkcs7_bundle([_FUZZ_LEAF, PKI.int2, PKI.int1], "der"),
    "p7b-pem": pkcs7_bundle([_FUZZ_LEAF, PKI.int2, PKI.int1], "pem"),
}
_FUZZ_KEYS = {
    "pkcs8-pem": _FUZZ_LEAF.key_pem(),
    "sec1-pem": _FUZZ_LEAF.key_pem("traditional"),
    "pkcs8-der": _FUZZ_LEAF.key_der(),
    "sec1-der": _FUZZ_LEAF.key_der("traditional"),
}


@st.composite
def uploads(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Arbitrary bytes in either field, or one to four edits of a good bundle or key."""
    good_cert = _FUZZ_FORMS["pem"]
    good_key = _FUZZ_KEYS["pkcs8-pem"]
    kind = draw(st.sampled_from(["bytes", "mutated-cert", "mutated-key", "both"]))
    if kind == "bytes":
        return draw(st.binary(max_size=3000)), draw(
            st.one_of(st.just(good_key), st.binary(max_size=600))
        )
    if kind == "mutated-cert":
        return draw(mutated(_FUZZ_FORMS[draw(st.sampled_from(sorted(_FUZZ_FORMS)))])), good_key
    if kind == "mutated-key":
        return good_cert, draw(mutated(_FUZZ_KEYS[draw(st.sampled_from(sorted(_FUZZ_KEYS)))]))
    return draw(mutated(good_cert)), draw(mutated(good_key))


@pytest.fixture(scope="module")
async def fuzz_env(env: Env) -> Env:
    await env.add(FUZZ_NAME, letsencrypt=False)
    return env


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(upload=uploads())
async def test_fuzzed_uploads_are_ok_or_clean_invalid_argument(
    fuzz_env: Env, upload: tuple[bytes, bytes]
) -> None:
    env = fuzz_env
    certificate, key = upload
    before_status = await env.status(FUZZ_NAME)
    before = await env.revision()
    try:
        got = await env.upload(FUZZ_NAME, certificate, key)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        reason, violations = details(error)
        assert reason in Reason.__members__, reason
        assert len(violations) == 1
        assert violations[0][0] in {"certificate", "private_key"}
        assert violations[0][1]
        assert await env.revision() == before
        assert await env.status(FUZZ_NAME) == before_status
        return
    # accepted: it can only be the one good certificate, stored canonically
    assert got.serving_source == CUSTOM
    assert chain_certs(got.custom_certificate.chain_pem) == [i.cert for i in PKI.chain(_FUZZ_LEAF)]
