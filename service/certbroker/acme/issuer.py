"""The ACME issuer: one account, orders driven to a certificate, HTTP-01 answered locally.

DNS-01 (every wildcard authorization, and every authorization of an order
asked with ``dns01=True``) is answered through a ``Dns01Responder``: the TXT
value is written in the broker's own zone, at the order's ``dns01_label``
(the domain's delegation label, bound to its owner: where that owner's
customer pointed the one-time CNAME), and is served before the challenge is
answered; it is removed when the order ends, success or failure. ``_select_challenge`` is the
one place that picks the type.

Why not ``ClientV2.poll_and_finalize``: it blocks a thread for the whole
order and polls once a second (about 2 s per certificate against a fast CA).
Here each order is a small state machine driven from the event loop; every
blocking library call runs in the issuer's *own* thread pool (never the
default one, so ACME work cannot starve or be starved by other ``to_thread``
users), and polls come every ``poll_interval`` seconds or when the server's
``Retry-After`` says.

The order loop is one switch over the observed order status, in the style of
cert-manager's order controller::

    pending     answer every pending authorization, poll them   (transient)
    ready       finalize with the CSR                            (transient)
    processing  wait, poll the order                             (transient)
    valid       download the chain                               (final)
    invalid     raise the classified problem                     (final)

Transient failures inside one step (badNonce, connection reset/refused,
timeouts, 5xx) are retried a few times with short waits; every other failure
surfaces as ``AcmeProblem`` (see ``problems``) for the scheduler's backoff.

Each worker thread gets its own ``ClientNetwork`` (own requests session and
nonce pool), created lazily: requests sessions are not documented as
thread-safe, and per-thread nonce pools avoid handing one nonce to two threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, cast

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy import jwa, jwk
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from acme import challenges, client, messages
from acme import errors as acme_errors
from certbroker.acme.keys import make_csr
from certbroker.acme.problems import (
    AcmeProblem,
    HttpStatusError,
    classify,
    from_acme_error,
    is_transient,
    parse_retry_after,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

USER_AGENT: Final = "certbroker-acme"
ORDER_INVALID: Final = "ACME_ORDER_INVALID"
#: A ``Retry-After`` longer than this on a *poll* is capped: the order deadline
#: bounds the whole wait anyway, and a stuck poll should surface as a timeout.
_MAX_POLL_WAIT: Final = 10.0


@dataclass(frozen=True)
class _Challenges:
    """How an order answers: DNS-01 for every authorization (``always``) or only
    wildcards, and the delegation label whose record receives DNS-01 values."""

    always: bool
    label: str


@dataclass(frozen=True)
class IssuedCertificate:
    """A downloaded certificate: the PEM chain (leaf first) and the order it came from."""

    chain_pem: str
    order_url: str


class AccountStore(Protocol):
    """Where the ACME account lives between restarts.

    The broker's implementation seals the key at rest; ``MemoryAccountStore``
    is the plain one for tests and benchmarks.
    """

    async def load(self) -> tuple[bytes, str] | None:
        """The account key (PKCS#8 PEM) and account URL, or None before the first start."""
        ...

    async def save(self, key_pem: bytes, url: str) -> None: ...


class ChallengeResponder(Protocol):
    """Publishes HTTP-01 answers (``Http01Responder`` or a router fan-out)."""

    def add(self, token: str, key_authorization: str) -> None: ...

    def remove(self, token: str) -> None: ...


class Dns01Responder(Protocol):
    """Publishes DNS-01 answers (``certbroker.acme.dns01.Dns01Updater``).

    ``label`` is the domain's delegation label (``certbroker.delegation``; a
    wildcard and its apex share it); ``value`` the TXT value. ``publish``
    returns only once the record is served; both raise ``AcmeProblem`` on failure.
    """

    async def publish(self, label: str, value: str) -> None: ...

    async def unpublish(self, label: str, value: str) -> None: ...


class MemoryAccountStore:
    """An ``AccountStore`` in memory: survives a new ``AcmeIssuer``, not a new process."""

    def __init__(self) -> None:
        self.value: tuple[bytes, str] | None = None
        self.saves = 0

    async def load(self) -> tuple[bytes, str] | None:
        return self.value

    async def save(self, key_pem: bytes, url: str) -> None:
        self.value = (key_pem, url)
        self.saves += 1


class _Network(client.ClientNetwork):
    """``ClientNetwork`` that keeps what classification needs from error responses.

    acme raises ``messages.Error`` without the HTTP response, so the status and
    ``Retry-After`` (needed for rateLimited) would be lost; and a non-JSON error
    page becomes a generic ``ClientError``. We attach the former and raise
    ``HttpStatusError`` for the latter.
    """

    @classmethod
    def _check_response(
        cls, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        if not response.ok and response.status_code != 409:
            try:
                response.json()
            except ValueError:
                raise HttpStatusError(
                    response.status_code, response.headers.get("Retry-After")
                ) from None
        try:
            checked: requests.Response = super()._check_response(
                response, content_type=content_type
            )
        except messages.Error as error:
            error.http_status = response.status_code
            error.retry_after_header = response.headers.get("Retry-After")
            raise
        return checked


def _jwk_and_alg(key_pem: bytes) -> tuple[jwk.JWK, jwa.JWASignature]:
    """The account key as a JWK plus the JWS algorithm it signs with.

    ClientNetwork defaults to RS256, which an EC key cannot sign: ES256 must be
    passed explicitly.
    """
    key = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": jwa.ES256, "secp384r1": jwa.ES384, "secp521r1": jwa.ES512}
        if key.curve.name not in algs:
            raise ValueError(f"unsupported account key curve {key.curve.name}")
        return jwk.JWKEC(key=key), algs[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return jwk.JWKRSA(key=key), jwa.RS256
    raise ValueError(f"unsupported account key type {type(key).__name__}")


def _new_account_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _retry_after_seconds(response: requests.Response) -> float | None:
    delta = parse_retry_after(response.headers.get("Retry-After"))
    return None if delta is None else delta.total_seconds()


# -- blocking steps (run in the issuer's pool, one client per thread) ------------


def _new_order(
    acme: client.ClientV2, csr_pem: bytes
) -> tuple[str, messages.Order, dict[str, messages.Authorization]]:
    """Create the order; acme also fetches its authorizations, which we keep (saves requests)."""
    orderr = acme.new_order(csr_pem)
    authzs = {str(a.uri): a.body for a in orderr.authorizations}
    return str(orderr.uri), orderr.body, authzs


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


def _download(acme: client.ClientV2, cert_url: str) -> str:
    text: str = acme._post_as_get(cert_url).text
    return text if text.endswith("\n") else text + "\n"


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
    ) -> None:
        self._directory_url = directory_url
        # requests takes a CA bundle path where acme's annotation says bool.
        self._verify = cast(bool, ca_bundle if ca_bundle else True)
        self._email = email
        self._store = account_store
        self._responder = responder
        self._dns01 = dns01
        self._poll_interval = poll_interval
        self._order_timeout = order_timeout
        self._http_timeout = http_timeout
        self._step_attempts = step_attempts
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="acme"
        )
        self._local = threading.local()
        self._nets: list[client.ClientNetwork] = []
        self._nets_lock = threading.Lock()
        self._inflight: set[asyncio.Future[Any]] = set()
        self._directory: messages.Directory | None = None
        self._jwk: jwk.JWK | None = None
        self._alg: jwa.JWASignature | None = None
        self._account: messages.RegistrationResource | None = None
        self._closed = False
        self._start_lock = asyncio.Lock()

    # -- account ----------------------------------------------------------------

    @property
    def account_url(self) -> str:
        if self._account is None:
            raise RuntimeError("AcmeIssuer.start() has not run")
        return str(self._account.uri)

    async def start(self) -> None:
        """Load or create the account. Idempotent per instance.

        After a restart the stored key finds its account again with
        ``onlyReturnExisting`` (the URL comes back in ``ConflictError.location``);
        if the CA no longer knows it (a test CA restarted), the same key
        registers anew and the new URL is saved.
        """
        async with self._start_lock:  # concurrent first orders must share one account
            if self._account is None:
                await self._start_locked()

    async def _start_locked(self) -> None:
        self._directory = await self._offload(self._get_directory)
        stored = await self._store.load()
        if stored is None:
            key_pem = await self._submit(_new_account_key)
            url: str | None = None
        else:
            key_pem, stored_url = stored
            self._jwk, self._alg = _jwk_and_alg(key_pem)
            url = await self._offload(self._find_account)
            if url is not None and url != stored_url:
                await self._store.save(key_pem, url)
        if url is None:
            self._jwk, self._alg = _jwk_and_alg(key_pem)
            url = await self._offload(self._register)
            await self._store.save(key_pem, url)
        self._account = messages.RegistrationResource(uri=url, body=messages.Registration())

    def _get_directory(self) -> messages.Directory:
        net = _Network(verify_ssl=self._verify, user_agent=USER_AGENT, timeout=self._http_timeout)
        try:
            directory: messages.Directory = client.ClientV2.get_directory(self._directory_url, net)
            return directory
        finally:
            net.session.close()

    def _account_client(self) -> client.ClientV2:
        """A client without account (``kid``): only for newAccount requests."""
        net = _Network(
            key=self._jwk,
            alg=self._alg,
            verify_ssl=self._verify,
            user_agent=USER_AGENT,
            timeout=self._http_timeout,
        )
        assert self._directory is not None
        return client.ClientV2(self._directory, net)

    def _find_account(self) -> str | None:
        acme = self._account_client()
        try:
            regr = acme.new_account(messages.NewRegistration(only_return_existing=True))
        except acme_errors.ConflictError as found:
            return str(found.location)
        except messages.Error as error:
            if error.code == "accountDoesNotExist":
                return None
            raise
        finally:
            acme.net.session.close()
        return str(regr.uri)

    def _register(self) -> str:
        acme = self._account_client()
        try:
            if self._email:
                reg = messages.NewRegistration.from_data(
                    email=self._email, terms_of_service_agreed=True
                )
            else:
                reg = messages.NewRegistration(terms_of_service_agreed=True)
            try:
                regr = acme.new_account(reg)
            except acme_errors.ConflictError as found:  # a retried request already made it
                return str(found.location)
            return str(regr.uri)
        finally:
            acme.net.session.close()

    # -- orders -----------------------------------------------------------------

    async def issue(
        self,
        names: list[str],
        key_pem: bytes,
        *,
        dns01: bool = False,
        dns01_label: str = "",
        on_order_created: Callable[[str], Awaitable[None]] | None = None,
    ) -> IssuedCertificate:
        """Order, validate, finalize and download a certificate for ``names`` (A-labels).

        ``on_order_created`` receives the order URL before any challenge is
        answered, so the caller can persist it and ``resume()`` after a crash
        instead of ordering (and possibly issuing) twice. ``dns01`` answers
        every authorization with DNS-01 (wildcard authorizations always are),
        writing the values at ``dns01_label``'s record; without a label a
        DNS-01 authorization fails (DNS01_LABEL_MISSING) rather than guess one.
        """
        self._require_started()
        csr_pem = await self._submit(make_csr, key_pem, names)
        order_url, order, authzs = await self._run(_new_order, csr_pem)
        if on_order_created is not None:
            await on_order_created(order_url)
        return await self._drive(
            order_url, order, csr_pem, key_pem, _Challenges(dns01, dns01_label), authzs
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
        """Continue an order created before a crash.

        valid → download (no new issuance); ready → finalize; pending → answer
        the challenges (published again: the old process's responder is gone);
        invalid, expired, unknown, or for other names → ``AcmeProblem`` with
        reason ACME_ORDER_INVALID, retryable, so the caller starts a new order.
        """
        self._require_started()
        order, _ = await self._run(_fetch_order, order_url)
        if order is None:
            raise AcmeProblem(ORDER_INVALID, "order no longer exists", retryable=True)
        ordered = {str(i.value).lower() for i in order.identifiers}
        if ordered != {n.lower() for n in names}:
            raise AcmeProblem(ORDER_INVALID, "order is for other names", retryable=True)
        if order.status == messages.STATUS_INVALID or self._expired(order):
            why = f" ({order.error.typ})" if order.error is not None else ""
            raise AcmeProblem(ORDER_INVALID, f"order is {order.status.name}{why}", retryable=True)
        csr_pem = await self._submit(make_csr, key_pem, names)
        return await self._drive(
            order_url, order, csr_pem, key_pem, _Challenges(dns01, dns01_label)
        )

    @staticmethod
    def _expired(order: messages.Order) -> bool:
        expires: dt.datetime | None = order.expires
        if expires is None or order.status == messages.STATUS_VALID:
            return False
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
        # A wall-clock field from the server can only be compared to the wall clock.
        return expires <= dt.datetime.now(dt.UTC)

    async def _drive(
        self,
        order_url: str,
        order: messages.Order,
        csr_pem: bytes,
        key_pem: bytes,
        dns01: _Challenges,
        known_authzs: dict[str, messages.Authorization] | None = None,
    ) -> IssuedCertificate:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._order_timeout
        published: list[str] = []
        published_dns: list[tuple[str, str]] = []
        retry_after: float | None = None
        try:
            while True:
                if loop.time() > deadline:
                    raise AcmeProblem("ACME_TIMEOUT", "order did not complete", retryable=True)
                status = order.status
                if status == messages.STATUS_VALID and order.certificate:
                    chain = await self._run(_download, order.certificate)
                    _check_key_matches(chain, key_pem)
                    return IssuedCertificate(chain_pem=chain, order_url=order_url)
                if status == messages.STATUS_INVALID:
                    raise await self._order_failure(order)
                if status == messages.STATUS_PENDING:
                    known = known_authzs or {}
                    await asyncio.gather(
                        *(
                            self._authorize(
                                url, published, published_dns, deadline, dns01, known.get(url)
                            )
                            for url in order.authorizations
                        )
                    )
                    known_authzs = None
                    # Every authorization is valid, so the order is ready: finalize
                    # without fetching it first (orderNotReady just means poll).
                    updated = await self._run(_finalize, order_url, order, csr_pem)
                    if updated is not None:
                        order = updated
                        continue
                elif status == messages.STATUS_READY:
                    updated = await self._run(_finalize, order_url, order, csr_pem)
                    if updated is not None:
                        order = updated
                        continue
                else:  # processing (or valid without certificate yet)
                    await self._wait(retry_after, deadline)
                fetched, retry_after = await self._run(_fetch_order, order_url)
                if fetched is None:
                    raise AcmeProblem(ORDER_INVALID, "order disappeared", retryable=True)
                order = fetched
        finally:
            for token in published:
                self._responder.remove(token)
            await self._unpublish_dns(published_dns)

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
        dns01: _Challenges,
        known: messages.Authorization | None = None,
    ) -> None:
        """Bring one authorization to valid, or raise its challenge's problem.

        ``known`` is the body new_order already fetched, so a fresh order
        costs no extra request here.
        """
        retry_after: float | None = None
        if known is not None:
            authz = known
        else:
            authz, retry_after = await self._run(_fetch_authz, url)
        answered = False
        while authz.status == messages.STATUS_PENDING:
            if not answered:
                answered = True
                challb = self._select_challenge(authz, dns01)
                response, validation = challb.chall.response_and_validation(self._jwk)
                # Publish even when the challenge is already processing: after a
                # crash the validator may still be about to connect.
                if isinstance(challb.chall, challenges.DNS01):
                    assert self._dns01 is not None  # _select_challenge checked
                    published_dns.append((dns01.label, str(validation)))
                    await self._dns01.publish(dns01.label, str(validation))
                else:
                    token = str(challb.chall.encode("token"))
                    self._responder.add(token, str(validation))
                    published.append(token)
                if challb.status == messages.STATUS_PENDING:
                    await self._run(_answer, challb, response)
            await self._wait(retry_after, deadline)
            authz, retry_after = await self._run(_fetch_authz, url)
        if authz.status != messages.STATUS_VALID:
            raise _authz_problem(authz)

    def _select_challenge(
        self, authz: messages.Authorization, dns01: _Challenges
    ) -> messages.ChallengeBody:
        """The one place that picks a challenge type.

        DNS-01 for wildcard authorizations (the only type the CA offers there)
        and for every authorization of a ``dns01`` order; HTTP-01 otherwise.
        """
        ident = str(authz.identifier.value)
        wanted: type[challenges.Challenge] = challenges.HTTP01
        if dns01.always or authz.wildcard:
            if self._dns01 is None:
                raise AcmeProblem(
                    "DNS01_NOT_CONFIGURED",
                    f"{ident} needs DNS-01 and CERTBROKER_DNS01_ZONE is not set",
                    retryable=False,
                    identifier=ident,
                )
            if not dns01.label:
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
        for url in order.authorizations:
            authz, _ = await self._run(_fetch_authz, url)
            if authz.status != messages.STATUS_VALID:
                problem = _authz_problem(authz)
                if problem.reason != ORDER_INVALID:
                    return problem
        if order.error is not None:
            return from_acme_error(order.error)
        return AcmeProblem(ORDER_INVALID, "order is invalid", retryable=True)

    async def _wait(self, retry_after: float | None, deadline: float) -> None:
        delay = max(self._poll_interval, min(retry_after or 0.0, _MAX_POLL_WAIT))
        remaining = deadline - asyncio.get_running_loop().time()
        await asyncio.sleep(max(0.0, min(delay, remaining)))

    # -- plumbing ---------------------------------------------------------------

    def _require_started(self) -> None:
        if self._account is None:
            raise RuntimeError("AcmeIssuer.start() has not run")
        if self._closed:
            raise RuntimeError("AcmeIssuer is closed")

    def _client(self) -> client.ClientV2:
        acme: client.ClientV2 | None = getattr(self._local, "client", None)
        if acme is None:
            net = _Network(
                key=self._jwk,
                account=self._account,
                alg=self._alg,
                verify_ssl=self._verify,
                user_agent=USER_AGENT,
                timeout=self._http_timeout,
            )
            assert self._directory is not None
            acme = client.ClientV2(self._directory, net)
            self._local.client = acme
            with self._nets_lock:
                self._nets.append(net)
        return acme

    def _with_retries(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one step in this worker thread, retrying transient failures briefly."""
        for attempt in Retrying(
            stop=stop_after_attempt(self._step_attempts),
            wait=wait_exponential(multiplier=0.05, max=1.0) + wait_random(0, 0.05),
            retry=retry_if_exception(is_transient),
            reraise=True,
        ):
            with attempt:
                return fn(*args)
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call in the issuer's pool (never the default one); raw errors."""
        if self._closed:
            raise RuntimeError("AcmeIssuer is closed")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, functools.partial(fn, *args))
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return await future

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run an ACME call in the pool with step retries; failures as ``AcmeProblem``."""
        try:
            return await self._submit(self._with_retries, fn, *args)
        except AcmeProblem:
            raise
        except Exception as error:
            raise classify(error) from error

    async def _run(self, step: Callable[..., T], *args: Any) -> T:
        """Run an ACME step with this thread's account client."""
        return await self._offload(lambda *a: step(self._client(), *a), *args)

    async def close(self) -> None:
        """Stop accepting work, let in-flight requests end, close sessions and the pool."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        with self._nets_lock:
            nets, self._nets = self._nets, []
        for net in nets:
            with contextlib.suppress(Exception):
                net.session.close()


def _authz_problem(authz: messages.Authorization) -> AcmeProblem:
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


def _check_key_matches(chain_pem: str, key_pem: bytes) -> None:
    """Refuse a chain whose leaf is not for our key (a resumed order from another key)."""
    leaf = x509.load_pem_x509_certificate(chain_pem.encode())
    key = serialization.load_pem_private_key(key_pem, password=None)
    if leaf.public_key() != key.public_key():
        raise AcmeProblem(
            ORDER_INVALID, "certificate does not match the private key", retryable=True
        )
