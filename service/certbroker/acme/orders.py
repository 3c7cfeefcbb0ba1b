"""One ACME order driven to a certificate: a switch over the observed order status.

In the style of cert-manager's order controller, each pass looks at the
order's status and takes one step::

    pending     answer every pending authorization, poll them   (transient)
    ready       finalize with the CSR                            (transient)
    processing  wait, poll the order                             (transient)
    valid       download the chain                               (final)
    invalid     raise the classified problem                     (final)

The requests themselves are behind ``OrderSteps`` (``AcmeSteps`` sends them
through the transport), so this machine is tested with an in-memory CA and
no network. Polls follow ``polling.PollSchedule``: the first soon (a fast CA
is not kept waiting), then doubling to once a second (Let's Encrypt takes
seconds to validate and is not polled hard), never sooner than the server's
``Retry-After`` (capped), all within the order's deadline.

Challenges: DNS-01 for every wildcard authorization (the only type the CA
offers there) and for every authorization of an order asked with DNS-01, its
TXT value written at the order's delegation label; HTTP-01 otherwise, answered
by the broker's responder. ``select_challenge`` is the one place that picks.
Everything published is removed when the order ends, success or failure.

Why not ``ClientV2.poll_and_finalize``: it blocks a thread for the whole
order and polls once a second (about 2 s per certificate against a fast CA).

Failures are ``AcmeProblem``. A failed order's problem carries
``failed_authorizations`` (how many of its authorizations the CA marked
invalid: Let's Encrypt counts those per name and account). An order that
cannot be resumed raises ``OrderGone``; ``resume_or_place`` then places a new
one, so callers never branch on that reason themselves.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from josepy import jwk
from opentelemetry import trace

from acme import challenges, messages
from certbroker.acme.keys import make_csr
from certbroker.acme.polling import PollSchedule
from certbroker.acme.problems import ERROR_PREFIX, AcmeProblem, from_acme_error
from certbroker.telemetry import DOMAIN_ATTRIBUTE

log = logging.getLogger(__name__)

ORDER_INVALID: Final = "ACME_ORDER_INVALID"
_ALREADY_REPLACED: Final = f"{ERROR_PREFIX}alreadyReplaced"


class OrderGone(AcmeProblem):
    """A stored order the CA can no longer complete (gone, invalid, expired, other names)."""

    def __init__(self, detail: str) -> None:
        super().__init__(ORDER_INVALID, detail, retryable=True)


@dataclass(frozen=True)
class IssuedCertificate:
    """A downloaded certificate: the PEM chain (leaf first) and the order it came from."""

    chain_pem: str
    order_url: str


@dataclass(frozen=True)
class Placed:
    """What newOrder answered: the order's URL and body, and its authorizations' bodies."""

    url: str
    order: messages.Order
    authorizations: dict[str, messages.Authorization]


@dataclass(frozen=True)
class Challenges:
    """How an order answers: DNS-01 for every authorization (``dns01``) or only
    wildcards, and the delegation label whose record receives DNS-01 values."""

    dns01: bool = False
    label: str = ""


class OrderSteps(Protocol):
    """The requests of one order. Each raises ``AcmeProblem``; each may be retried.

    ``fetch_*`` return the server's ``Retry-After`` in seconds (or None) beside
    the body; ``fetch_order`` returns ``(None, None)`` for an order the server
    no longer knows. ``finalize`` returns None when the server says the order
    is not ready (poll again).
    """

    async def new_order(self, names: list[str], csr_pem: bytes, replaces: str) -> Placed: ...

    async def fetch_order(self, url: str) -> tuple[messages.Order | None, float | None]: ...

    async def fetch_authz(self, url: str) -> tuple[messages.Authorization, float | None]: ...

    async def answer(
        self, challb: messages.ChallengeBody, response: challenges.ChallengeResponse
    ) -> None: ...

    async def finalize(
        self, url: str, order: messages.Order, csr_pem: bytes
    ) -> messages.Order | None: ...

    async def download(self, cert_url: str) -> str: ...


class ChallengeResponder(Protocol):
    """Publishes HTTP-01 answers (``Http01Responder``, or ``SharedChallenges`` for every
    broker on one store).

    ``publish`` returns once the answer is served wherever the CA may ask (the
    challenge is answered only then) and raises if it cannot be (the store is
    down); ``unpublish`` never raises.
    """

    async def publish(self, token: str, key_authorization: str) -> None: ...

    async def unpublish(self, token: str) -> None: ...


class Dns01Responder(Protocol):
    """Publishes DNS-01 answers (``certbroker.acme.dns01.Dns01Updater``).

    ``label`` is the domain's delegation label (``certbroker.delegation``; a
    wildcard and its apex share it); ``value`` the TXT value. ``publish``
    returns only once the record is served; both raise ``AcmeProblem`` on
    failure; both are idempotent (adding or removing one value twice is harmless).
    """

    async def publish(self, label: str, value: str) -> None: ...

    async def unpublish(self, label: str, value: str) -> None: ...


class OrderMachine:
    """Drives orders for one account. Coroutines safe to call concurrently."""

    def __init__(
        self,
        steps: OrderSteps,
        account_key: Callable[[], jwk.JWK],
        responder: ChallengeResponder,
        dns01: Dns01Responder | None = None,
        *,
        poll_interval: float = 0.05,
        poll_cap: float = 1.0,
        order_timeout: float = 120.0,
        csr: Callable[[bytes, list[str]], Awaitable[bytes]] | None = None,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        tracer: trace.Tracer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._tracer = tracer or trace.NoOpTracer()
        self._steps = steps
        # Signing a CSR with an RSA key takes milliseconds: the issuer runs it in its pool.
        self._csr = csr or _csr_inline
        self._account_key = account_key
        self._responder = responder
        self._dns01 = dns01
        self._polls = PollSchedule(first=poll_interval, cap=max(poll_interval, poll_cap))
        self._sleep = sleep  # tests record the waits
        self._order_timeout = order_timeout
        # Only for the server's own ``expires`` field, a wall-clock time by definition.
        self._wall_clock = wall_clock

    async def place(
        self,
        names: list[str],
        key_pem: bytes,
        how: Challenges,
        *,
        replaces: str = "",
        on_order_created: Callable[[str], Awaitable[None]] | None = None,
    ) -> IssuedCertificate:
        """Order, validate, finalize and download a certificate for ``names`` (A-labels).

        ``on_order_created`` receives the order URL before any challenge is
        answered, so the caller can persist it and resume after a crash instead
        of ordering (and possibly issuing) twice. ``replaces`` (an ARI
        certificate id) is sent with the order; a CA that says the certificate
        was already replaced gets the order again without it.
        """
        csr_pem = await self._csr(key_pem, names)
        try:
            placed = await self._steps.new_order(names, csr_pem, replaces)
        except AcmeProblem as problem:
            if not replaces or problem.type_urn != _ALREADY_REPLACED:
                raise
            log.info("the CA says %s was already replaced; ordering without replaces", replaces)
            placed = await self._steps.new_order(names, csr_pem, "")
        if on_order_created is not None:
            await on_order_created(placed.url)
        return await self._drive(
            placed.url, placed.order, csr_pem, key_pem, how, placed.authorizations
        )

    async def resume(
        self, order_url: str, names: list[str], key_pem: bytes, how: Challenges
    ) -> IssuedCertificate:
        """Continue an order created before a crash.

        valid → download (no new issuance); ready → finalize; pending → answer
        the challenges (published again: the old process's responder is gone);
        invalid, expired, unknown, or for other names → ``OrderGone``.
        """
        order, _ = await self._steps.fetch_order(order_url)
        if order is None:
            raise OrderGone("order no longer exists")
        ordered = {str(i.value).lower() for i in order.identifiers}
        if ordered != {n.lower() for n in names}:
            raise OrderGone("order is for other names")
        if order.status == messages.STATUS_INVALID or self._expired(order):
            why = f" ({order.error.typ})" if order.error is not None else ""
            raise OrderGone(f"order is {order.status.name}{why}")
        csr_pem = await self._csr(key_pem, names)
        return await self._drive(order_url, order, csr_pem, key_pem, how)

    async def resume_or_place(
        self,
        order_url: str,
        names: list[str],
        key_pem: bytes,
        how: Challenges,
        *,
        replaces: str = "",
        on_order_created: Callable[[str], Awaitable[None]] | None = None,
    ) -> IssuedCertificate:
        """``resume`` when there is an order to continue, a new order when it is gone."""
        if order_url:
            try:
                return await self.resume(order_url, names, key_pem, how)
            except OrderGone as gone:
                log.info("order %s cannot be resumed (%s); ordering anew", order_url, gone.detail)
        return await self.place(
            names, key_pem, how, replaces=replaces, on_order_created=on_order_created
        )

    def _expired(self, order: messages.Order) -> bool:
        expires: dt.datetime | None = order.expires
        if expires is None or order.status == messages.STATUS_VALID:
            return False
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
        return expires <= self._wall_clock()

    async def _drive(
        self,
        order_url: str,
        order: messages.Order,
        csr_pem: bytes,
        key_pem: bytes,
        how: Challenges,
        known_authzs: dict[str, messages.Authorization] | None = None,
    ) -> IssuedCertificate:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._order_timeout
        published: list[str] = []
        published_dns: list[tuple[str, str]] = []
        retry_after: float | None = None
        polls = 0  # of this order while it is processing: the waits grow
        try:
            while True:
                if loop.time() > deadline:
                    raise AcmeProblem("ACME_TIMEOUT", "order did not complete", retryable=True)
                status = order.status
                if status == messages.STATUS_VALID and order.certificate:
                    chain = await self._steps.download(order.certificate)
                    check_key_matches(chain, key_pem)
                    return IssuedCertificate(chain_pem=chain, order_url=order_url)
                if status == messages.STATUS_INVALID:
                    raise await self._order_failure(order)
                if status in (messages.STATUS_PENDING, messages.STATUS_READY):
                    if status == messages.STATUS_PENDING:
                        await self._authorize_all(
                            order, published, published_dns, deadline, how, known_authzs or {}
                        )
                        known_authzs = None
                    # Every authorization is valid, so the order is ready: finalize
                    # without fetching it first (orderNotReady just means poll).
                    updated = await self._steps.finalize(order_url, order, csr_pem)
                    if updated is not None:
                        order, polls = updated, 0  # finalized: its processing polls start short
                        continue
                # processing, valid without a certificate yet, or not ready after all:
                # poll on the schedule (never a tight loop of finalize requests)
                polls += 1
                await self._wait(polls, retry_after, deadline)
                fetched, retry_after = await self._steps.fetch_order(order_url)
                if fetched is None:
                    raise AcmeProblem(ORDER_INVALID, "order disappeared", retryable=True)
                order = fetched
        finally:
            # shielded, like the DNS values: a cancelled order still withdraws its answers
            if published:
                responder = self._responder
                await asyncio.shield(asyncio.gather(*(responder.unpublish(t) for t in published)))
            await self._unpublish_dns(published_dns)

    async def _authorize_all(
        self,
        order: messages.Order,
        published: list[str],
        published_dns: list[tuple[str, str]],
        deadline: float,
        how: Challenges,
        known: dict[str, messages.Authorization],
    ) -> None:
        """Every authorization to valid; else the first problem, counting the failed ones."""
        outcomes = await asyncio.gather(
            *(
                self._authorize_traced(url, published, published_dns, deadline, how, known.get(url))
                for url in order.authorizations
            ),
            return_exceptions=True,
        )
        problems: list[AcmeProblem] = []
        for outcome in outcomes:
            if isinstance(outcome, AcmeProblem):
                problems.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        if problems:
            first = problems[0]
            first.failed_authorizations = sum(p.failed_authorizations for p in problems)
            raise first

    async def _authorize_traced(
        self,
        url: str,
        published: list[str],
        published_dns: list[tuple[str, str]],
        deadline: float,
        how: Challenges,
        known: messages.Authorization | None,
    ) -> None:
        """``_authorize`` as an ``acme.authorization`` span, named by its identifier if known."""
        attributes = {"acme.authorization": url}
        if known is not None and known.identifier is not None:
            ident = str(known.identifier.value)
            attributes[DOMAIN_ATTRIBUTE] = f"*.{ident}" if known.wildcard else ident
        with self._tracer.start_as_current_span("acme.authorization", attributes=attributes):
            await self._authorize(url, published, published_dns, deadline, how, known)

    async def _unpublish_dns(self, published: list[tuple[str, str]]) -> None:
        """Remove the order's DNS-01 values, success or failure; a failure is only logged.

        Shielded so a cancelled order (shutdown) still removes what it wrote.
        """
        if not published or self._dns01 is None:
            return
        dns01 = self._dns01

        async def remove(label: str, value: str) -> None:
            try:
                await dns01.unpublish(label, value)
            except Exception as error:
                log.warning("could not remove the DNS-01 value at %s: %s", label, error)

        await asyncio.shield(asyncio.gather(*(remove(i, v) for i, v in published)))

    async def _authorize(
        self,
        url: str,
        published: list[str],
        published_dns: list[tuple[str, str]],
        deadline: float,
        how: Challenges,
        known: messages.Authorization | None = None,
    ) -> None:
        """Bring one authorization to valid, or raise its challenge's problem.

        ``known`` is the body newOrder already fetched, so a fresh order costs
        no extra request here.
        """
        retry_after: float | None = None
        if known is not None:
            authz = known
        else:
            authz, retry_after = await self._steps.fetch_authz(url)
        answered = False
        polls = 0
        while authz.status == messages.STATUS_PENDING:
            if not answered:
                answered = True
                challb = self.select_challenge(authz, how)
                response, validation = challb.chall.response_and_validation(self._account_key())
                # Publish even when the challenge is already processing: after a
                # crash the validator may still be about to connect.
                if isinstance(challb.chall, challenges.DNS01):
                    assert self._dns01 is not None  # select_challenge checked
                    published_dns.append((how.label, str(validation)))
                    await self._dns01.publish(how.label, str(validation))
                else:
                    token = str(challb.chall.encode("token"))
                    await self._responder.publish(token, str(validation))
                    published.append(token)
                if challb.status == messages.STATUS_PENDING:
                    await self._steps.answer(challb, response)
            if asyncio.get_running_loop().time() > deadline:
                raise AcmeProblem("ACME_TIMEOUT", "authorization did not complete", retryable=True)
            polls += 1
            await self._wait(polls, retry_after, deadline)
            authz, retry_after = await self._steps.fetch_authz(url)
        if authz.status != messages.STATUS_VALID:
            problem = authz_problem(authz)
            problem.failed_authorizations = 1
            raise problem

    def select_challenge(
        self, authz: messages.Authorization, how: Challenges
    ) -> messages.ChallengeBody:
        """The one place that picks a challenge type.

        DNS-01 for wildcard authorizations and for every authorization of a
        DNS-01 order; HTTP-01 otherwise.
        """
        ident = str(authz.identifier.value)
        wanted: type[challenges.Challenge] = challenges.HTTP01
        if how.dns01 or authz.wildcard:
            if self._dns01 is None:
                raise AcmeProblem(
                    "DNS01_NOT_CONFIGURED",
                    f"{ident} needs DNS-01 and CERTBROKER_DNS01_ZONE is not set",
                    retryable=False,
                    identifier=ident,
                )
            if not how.label:
                raise AcmeProblem(
                    "DNS01_LABEL_MISSING",
                    f"{ident} needs DNS-01 and the order names no delegation label",
                    retryable=False,
                    identifier=ident,
                )
            wanted = challenges.DNS01
        for challb in authz.challenges:
            if isinstance(challb.chall, wanted):
                return challb
        offered = ", ".join(str(c.chall.typ) for c in authz.challenges)
        raise AcmeProblem(
            "ACME_NO_SUPPORTED_CHALLENGE",
            f"no {wanted.typ} challenge for {ident} (offered: {offered})",
            retryable=False,
            identifier=ident,
        )

    async def _order_failure(self, order: messages.Order) -> AcmeProblem:
        """The most specific problem for an invalid order: an authz's, else the order's."""
        found: AcmeProblem | None = None
        failed = 0
        for url in order.authorizations:
            authz, _ = await self._steps.fetch_authz(url)
            if authz.status == messages.STATUS_INVALID:
                failed += 1
            if authz.status != messages.STATUS_VALID:
                problem = authz_problem(authz)
                if found is None and problem.reason != ORDER_INVALID:
                    found = problem
        if found is None and order.error is not None:
            found = from_acme_error(order.error)
        if found is None:
            found = AcmeProblem(ORDER_INVALID, "order is invalid", retryable=True)
        found.failed_authorizations = failed
        return found

    async def _wait(self, poll: int, retry_after: float | None, deadline: float) -> None:
        """Before the ``poll``-th poll of one resource (``PollSchedule``), within the deadline."""
        delay = self._polls.delay(poll, retry_after)
        remaining = deadline - asyncio.get_running_loop().time()
        await self._sleep(max(0.0, min(delay, remaining)))


async def _csr_inline(key_pem: bytes, names: list[str]) -> bytes:
    return make_csr(key_pem, names)


def authz_problem(authz: messages.Authorization) -> AcmeProblem:
    """The problem of an authorization that did not become valid."""
    ident = str(authz.identifier.value) if authz.identifier is not None else ""
    for challb in authz.challenges:
        if challb.error is not None:
            problem = from_acme_error(challb.error)
            if not problem.identifier:
                problem.identifier = ident
            return problem
    return AcmeProblem(
        ORDER_INVALID,
        f"authorization for {ident} is {authz.status.name}",
        retryable=True,
        identifier=ident,
    )


def check_key_matches(chain_pem: str, key_pem: bytes) -> None:
    """Refuse a chain whose leaf is not for our key (a resumed order from another key)."""
    leaf = x509.load_pem_x509_certificate(chain_pem.encode())
    key = serialization.load_pem_private_key(key_pem, password=None)
    if leaf.public_key() != key.public_key():
        raise AcmeProblem(
            ORDER_INVALID, "certificate does not match the private key", retryable=True
        )
