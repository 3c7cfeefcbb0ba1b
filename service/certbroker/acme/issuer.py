"""The ACME issuer: one account, orders driven to certificates, renewal information.

It composes the module's seams and implements ``certbroker.ports.Issuer``:

- ``transport``: the issuer's own thread pool, a client per thread, and the
  typed step-retry policy (transient failures only);
- ``account``: the account found again after a restart, or registered;
- ``orders``: the order state machine (status switch, challenges, resume);
- ``ari``: RFC 9773 renewal information and ``replaces``.

``AcmeSteps`` is the one place that speaks acme's client API for an order's
requests (``orders.OrderSteps``), each run through the transport.

With a tracer, each authorization is an ``acme.authorization`` span and each
request an ``acme.<step>`` span made in the worker thread (``transport``),
all in the trace of the scheduler step that placed the order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import requests
from josepy import jwk
from opentelemetry import trace

from acme import challenges, client, messages
from certbroker.acme import ari
from certbroker.acme.account import (
    Account,
    AccountOpener,
    AccountStore,
    MemoryAccountStore,
    new_account_key,
)
from certbroker.acme.keys import make_csr
from certbroker.acme.orders import (
    ORDER_INVALID,
    ChallengeResponder,
    Challenges,
    Dns01Responder,
    IssuedCertificate,
    OrderMachine,
    Placed,
)
from certbroker.acme.problems import AcmeProblem, HttpStatusError, parse_retry_after
from certbroker.acme.transport import ORDER_DOMAIN, StepRetry, Transport
from certbroker.ports import RenewalWindow

log = logging.getLogger(__name__)

__all__ = [
    "ORDER_INVALID",
    "AccountStore",
    "AcmeIssuer",
    "AcmeSteps",
    "ChallengeResponder",
    "Dns01Responder",
    "IssuedCertificate",
    "MemoryAccountStore",
    "new_account_key",
]


def _retry_after_seconds(response: requests.Response) -> float | None:
    delta = parse_retry_after(response.headers.get("Retry-After"))
    return None if delta is None else delta.total_seconds()


# -- blocking steps (run in the transport's pool, one client per thread) -------------


def _new_order(acme: client.ClientV2, names: list[str], csr_pem: bytes, replaces: str) -> Placed:
    """POST newOrder (with ``replaces`` when renewing under ARI), then fetch its authorizations.

    acme's ``ClientV2.new_order`` cannot send ``replaces``; this is its body
    with ``ari.new_order_body``.
    """
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in names]
    response = acme._post(acme.directory["newOrder"], ari.new_order_body(identifiers, replaces))
    body = messages.Order.from_json(response.json())
    authzs: dict[str, messages.Authorization] = {}
    for url in body.authorizations:
        authzs[url] = messages.Authorization.from_json(acme._post_as_get(url).json())
    return Placed(url=str(response.headers.get("Location")), order=body, authorizations=authzs)


def _fetch_order(acme: client.ClientV2, url: str) -> tuple[messages.Order | None, float | None]:
    """The order and its Retry-After; ``(None, None)`` if the server no longer knows it."""
    try:
        response = acme._post_as_get(url)  # no public "get order by URL" in acme
    except messages.Error as error:
        if getattr(error, "http_status", None) == 404:
            return None, None
        raise
    except HttpStatusError as error:
        if error.status == 404:
            return None, None
        raise
    return messages.Order.from_json(response.json()), _retry_after_seconds(response)


def _fetch_authz(acme: client.ClientV2, url: str) -> tuple[messages.Authorization, float | None]:
    response = acme._post_as_get(url)
    return messages.Authorization.from_json(response.json()), _retry_after_seconds(response)


def _answer(
    acme: client.ClientV2, challb: messages.ChallengeBody, response: challenges.ChallengeResponse
) -> None:
    acme.answer_challenge(challb, response)


def _finalize(
    acme: client.ClientV2, order_url: str, order: messages.Order, csr_pem: bytes
) -> messages.Order | None:
    """Send the CSR; None when the server says the order is not ready (poll again).

    orderNotReady also comes back when a retried finalize reaches an order that
    the first attempt already moved to processing: polling sorts both out.
    """
    orderr = messages.OrderResource(body=order, uri=order_url, csr_pem=csr_pem)
    try:
        updated = acme.begin_finalization(orderr)
    except messages.Error as error:
        if error.code == "orderNotReady":
            return None
        raise
    body: messages.Order = updated.body
    return body


def _account_status(acme: client.ClientV2, account_url: str) -> str:
    """POST-as-GET of the account URL (RFC 8555 §7.3.2): its ``status`` field."""
    body = acme._post_as_get(account_url).json()
    status = body.get("status") if isinstance(body, dict) else None
    if not isinstance(status, str):
        raise AcmeProblem("ACME_PROTOCOL", "the account has no status", retryable=True)
    return status


def _download(acme: client.ClientV2, cert_url: str) -> str:
    text: str = acme._post_as_get(cert_url).text
    return text if text.endswith("\n") else text + "\n"


class AcmeSteps:
    """``orders.OrderSteps`` over a transport: each request retried, failures classified."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def new_order(self, names: list[str], csr_pem: bytes, replaces: str) -> Placed:
        return await self._transport.with_client(_new_order, names, csr_pem, replaces)

    async def fetch_order(self, url: str) -> tuple[messages.Order | None, float | None]:
        return await self._transport.with_client(_fetch_order, url)

    async def fetch_authz(self, url: str) -> tuple[messages.Authorization, float | None]:
        return await self._transport.with_client(_fetch_authz, url)

    async def answer(
        self, challb: messages.ChallengeBody, response: challenges.ChallengeResponse
    ) -> None:
        await self._transport.with_client(_answer, challb, response)

    async def finalize(
        self, url: str, order: messages.Order, csr_pem: bytes
    ) -> messages.Order | None:
        return await self._transport.with_client(_finalize, url, order, csr_pem)

    async def download(self, cert_url: str) -> str:
        return await self._transport.with_client(_download, cert_url)


class AcmeIssuer:
    """Issues certificates from one ACME account. ``start()`` before use, ``close()`` after.

    The constructor does no I/O. All methods are coroutines safe to call
    concurrently; the pool size (``max_workers``) bounds the ACME requests in
    flight.
    """

    def __init__(
        self,
        directory_url: str,
        *,
        ca_bundle: str | None,
        email: str | None,
        account_store: AccountStore,
        responder: ChallengeResponder,
        dns01: Dns01Responder | None = None,
        max_workers: int = 16,
        poll_interval: float = 0.05,
        order_timeout: float = 120.0,
        http_timeout: int = 15,
        step_attempts: int = 4,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._transport = Transport(
            ca_bundle=ca_bundle,
            http_timeout=http_timeout,
            max_workers=max_workers,
            retry=StepRetry(attempts=step_attempts),
            tracer=tracer,
        )
        self._opener = AccountOpener(self._transport, directory_url, account_store, email)
        self._account: Account | None = None
        self._renewal_info_url = ""
        self._orders = OrderMachine(
            AcmeSteps(self._transport),
            self._account_key,
            responder,
            dns01,
            poll_interval=poll_interval,
            order_timeout=order_timeout,
            csr=self._csr,
            tracer=tracer,
        )
        self._start_lock = asyncio.Lock()

    # -- account ----------------------------------------------------------------

    @property
    def account_url(self) -> str:
        if self._account is None:
            raise RuntimeError("AcmeIssuer.start() has not run")
        return self._account.url

    async def start(self) -> None:
        """Load or create the account. Idempotent; raises ``AcmeProblem``."""
        async with self._start_lock:  # concurrent first orders must share one account
            if self._account is None:
                account = await self._opener.open()
                self._transport.use(account.directory, account.identity)
                try:
                    self._renewal_info_url = str(account.directory["renewalInfo"]).rstrip("/")
                except KeyError:  # acme's Directory has no ``in``
                    self._renewal_info_url = ""
                self._account = account

    async def probe(self) -> None:
        """One GET of the directory: raises ``AcmeProblem`` while the CA is unavailable."""
        await self._opener.probe()

    async def account_status(self) -> str:
        """The account as the CA reports it (``ports.Issuer.account_status``)."""
        account = self._require_started()
        try:
            return await self._transport.with_client(_account_status, account.url)
        except AcmeProblem as problem:
            if problem.unauthorized:  # a deactivated account may not even look at itself
                return "deactivated"
            if problem.account_gone:
                return "gone"
            raise

    async def recover_account(self, *, new_key: bool) -> None:
        """Find or register the account again (``ports.Issuer.recover_account``)."""
        async with self._start_lock:
            account = await self._opener.recover(new_key=new_key)
            self._transport.use(account.directory, account.identity)
            self._account = account
            log.info("ACME account is now %s", account.url)

    def _account_key(self) -> jwk.JWK:
        return self._require_started().identity.key

    def _require_started(self) -> Account:
        if self._account is None:
            raise RuntimeError("AcmeIssuer.start() has not run")
        if self._transport.closed:
            raise RuntimeError("AcmeIssuer is closed")
        return self._account

    async def _csr(self, key_pem: bytes, names: list[str]) -> bytes:
        return await self._transport.submit(make_csr, key_pem, names)

    # -- orders -----------------------------------------------------------------

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
    ) -> IssuedCertificate:
        """A certificate for ``names`` (A-labels) with ``key_pem``.

        ``resume_url``: an order this broker created before a crash, continued if
        the CA can still complete it, else a new order is placed. ``replaces``:
        the ARI id of the certificate this one renews (sent only when the CA
        offers ARI). ``on_order_created`` receives a new order's URL before any
        challenge is answered, so the caller can persist it. ``dns01`` answers
        every authorization with DNS-01 (wildcards always are) at
        ``dns01_label``'s record.
        """
        self._require_started()
        ORDER_DOMAIN.set(names[0] if names else "")  # this order's task: for request spans
        return await self._orders.resume_or_place(
            resume_url,
            names,
            key_pem,
            Challenges(dns01, dns01_label),
            replaces=replaces if self.offers_ari else "",
            on_order_created=on_order_created,
        )

    async def resume(
        self,
        order_url: str,
        names: list[str],
        key_pem: bytes,
        *,
        dns01: bool = False,
        dns01_label: str = "",
    ) -> IssuedCertificate:
        """Continue an order created before a crash; ``OrderGone`` (ACME_ORDER_INVALID,
        retryable) when the CA can no longer complete it."""
        self._require_started()
        ORDER_DOMAIN.set(names[0] if names else "")
        return await self._orders.resume(order_url, names, key_pem, Challenges(dns01, dns01_label))

    # -- renewal information (RFC 9773) -----------------------------------------

    @property
    def offers_ari(self) -> bool:
        """The CA's directory lists ``renewalInfo`` (known once started)."""
        return self._account is not None and bool(self._renewal_info_url)

    async def renewal_info(self, chain_pem: str) -> RenewalWindow | None:
        """The CA's suggested renewal window for the chain's leaf; None without ARI.

        Raises ``AcmeProblem`` when the CA cannot answer (retryable) or answers
        nonsense (ACME_PROTOCOL). An unsigned GET: idempotent, safe to cancel.
        """
        self._require_started()
        if not self.offers_ari:
            return None
        try:
            url = f"{self._renewal_info_url}/{ari.cert_id(chain_pem)}"
        except ari.ARIError as error:
            raise AcmeProblem("ACME_PROTOCOL", str(error), retryable=False) from None
        body, retry_after = await self._transport.call(self._get_json, url)
        try:
            return ari.parse_renewal_info(body, retry_after)
        except ari.ARIError as error:
            raise AcmeProblem("ACME_PROTOCOL", str(error), retryable=True) from None

    def _get_json(self, url: str) -> tuple[object, timedelta | None]:
        net = self._transport.network()
        try:
            response = net.get(url, content_type="application/json")
            return response.json(), parse_retry_after(response.headers.get("Retry-After"))
        finally:
            net.session.close()

    async def close(self) -> None:
        """Stop accepting work, let in-flight requests end, close sessions and the pool."""
        await self._transport.close()
