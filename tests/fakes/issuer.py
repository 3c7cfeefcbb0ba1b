"""``ports.Issuer`` in memory: certificates signed by a test CA at the fake clock's time.

Each order is recorded (names, ``replaces``, ``resume_url``, DNS-01 label), so a
test can assert what the CA was asked; outcomes are scripted per name
(``fail``; ``unauthorized()`` is the CA refusing one request while the
account is fine), and renewal windows (ARI) come from ``window``.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from acme import messages
from cryptography.hazmat.primitives import serialization

from certbroker.acme import ari
from certbroker.acme.problems import ERROR_PREFIX, AcmeProblem, classify
from certbroker.clock import Clock
from certbroker.ports import RenewalWindow
from tests.pki import TestPKI, make_leaf

PKI = TestPKI("Fake ACME", key_slot=6)


@dataclass(frozen=True)
class OrderCall:
    names: tuple[str, ...]
    replaces: str
    resume_url: str
    dns01: bool
    dns01_label: str


@dataclass(frozen=True)
class FakeCertificate:
    chain_pem: str
    order_url: str


@dataclass
class FakeIssuer:
    """A CA that answers at once; ``lifetime`` is its certificates' validity."""

    clock: Clock
    lifetime: timedelta = timedelta(days=90)
    ari: bool = False
    #: (start, end, retry_after) of the window the CA suggests for a certificate, or None.
    window: Callable[[str], RenewalWindow | None] | None = None
    calls: list[OrderCall] = field(default_factory=list)
    renewal_info_calls: list[str] = field(default_factory=list)
    start_failures: list[AcmeProblem] = field(default_factory=list)
    #: The CA is unreachable: every request raises ``outage()``.
    down: bool = False
    #: The CA forgot the account (accountDoesNotExist), or it was deactivated (every
    #: signed request, the account's own look-up included, is ``unauthorized``), until
    #: it is recovered.
    account_lost: bool = False
    deactivated: bool = False
    #: Order URLs the CA answers 404 for (``forget_all``: every order URL, new ones too).
    forgotten: set[str] = field(default_factory=set)
    forget_all: bool = False
    #: Order URLs the CA has but can no longer complete (invalid, expired): resuming one
    #: places a new order instead, inside the issuer (``OrderGone`` in AcmeIssuer).
    unfinishable: set[str] = field(default_factory=set)
    probes: int = 0
    status_checks: int = 0  # account_status calls
    recoveries: list[bool] = field(default_factory=list)  # new_key of each recovery
    _failures: dict[str, list[AcmeProblem]] = field(default_factory=dict)
    _orders: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def fail(self, name: str, *problems: AcmeProblem) -> None:
        """The next orders for ``name`` fail with ``problems``, in turn."""
        self._failures.setdefault(name, []).extend(problems)

    def always_fail(self, name: str, problem: AcmeProblem, times: int = 50) -> None:
        self.fail(name, *([problem] * times))

    def orders_for(self, name: str) -> list[OrderCall]:
        return [c for c in self.calls if name in c.names]

    async def start(self) -> None:
        if self.down:
            raise outage()
        if self.start_failures:
            raise self.start_failures.pop(0)

    async def probe(self) -> None:
        self.probes += 1
        if self.down:
            raise outage()

    async def account_status(self) -> str:
        self.status_checks += 1
        if self.down:
            raise outage()
        if self.deactivated:
            return "deactivated"
        return "gone" if self.account_lost else "valid"

    async def recover_account(self, *, new_key: bool) -> None:
        if self.down:
            raise outage()
        self.recoveries.append(new_key)
        self.account_lost = False
        self.deactivated = False

    @property
    def offers_ari(self) -> bool:
        return self.ari

    async def issue(
        self,
        names: list[str],
        key_pem: bytes,
        *,
        dns01: bool = False,
        dns01_label: str = "",
        replaces: str = "",
        resume_url: str = "",
        on_order_created: Callable[[str], Awaitable[None]] | None = None,
    ) -> FakeCertificate:
        self.calls.append(
            OrderCall(tuple(names), replaces if self.ari else "", resume_url, dns01, dns01_label)
        )
        if self.down:
            raise outage()
        if self.deactivated:
            raise unauthorized()
        if self.account_lost:
            raise _refused("accountDoesNotExist", 400)
        if resume_url and (self.forget_all or resume_url in self.forgotten):
            gone = problem("ACME_MALFORMED", retryable=False)
            gone.not_found = True
            raise gone
        url = "" if resume_url in self.unfinishable else resume_url
        if not url:
            url = f"https://fake-ca.test/order/{next(self._orders)}"
            if on_order_created is not None:
                await on_order_created(url)
        if self.forget_all:
            gone = problem("ACME_MALFORMED", retryable=False)
            gone.not_found = True  # the authorization URL of the new order is gone too
            raise gone
        pending = self._failures.get(names[0])
        if pending:
            raise pending.pop(0)
        return FakeCertificate(self.chain(names, key_pem), url)

    def chain(self, names: list[str], key_pem: bytes, not_before: datetime | None = None) -> str:
        start = not_before or self.clock.now()
        key = serialization.load_pem_private_key(key_pem, password=None)
        leaf = make_leaf(
            PKI.int2,
            names,
            key,  # type: ignore[arg-type]
            not_before=start,
            not_after=start + self.lifetime,
        )
        return b"".join(i.pem for i in PKI.chain(leaf)).decode()

    async def renewal_info(self, chain_pem: str) -> RenewalWindow | None:
        if self.down:
            raise outage()
        if not self.ari:
            return None
        cert_id = ari.cert_id(chain_pem)
        self.renewal_info_calls.append(cert_id)
        return self.window(cert_id) if self.window is not None else None


def problem(reason: str, *, retryable: bool, retry_after: timedelta | None = None) -> AcmeProblem:
    """An ``AcmeProblem`` as the issuer raises it (detail names the reason)."""
    return AcmeProblem(
        reason, f"the fake CA says {reason}", retryable=retryable, retry_after=retry_after
    )


def outage(reason: str = "ACME_NETWORK") -> AcmeProblem:
    """What a request raises while the CA is down (connection refused, 5xx, timeout)."""
    down = problem(reason, retryable=True)
    down.ca_unavailable = True
    return down


def unauthorized() -> AcmeProblem:
    """``unauthorized`` on a signed request, marked as ``problems.classify`` marks it: a
    deactivated account's every request, or one request this account may not make."""
    return _refused("unauthorized", 403)


def _refused(code: str, status: int) -> AcmeProblem:
    """A signed request refused with problem ``code``, classified by the real ``classify``."""
    error = messages.Error(typ=f"{ERROR_PREFIX}{code}", detail=f"the fake CA says {code}")
    error.http_status = status  # what the issuer's network layer attaches
    return classify(error)
