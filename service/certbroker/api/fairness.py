"""Per-peer fairness: one caller cannot take the broker's event loop from the others.

Why a module of its own: every RPC runs on one event loop, and gRPC Python
spends ~0.4 ms of CPU on each call before any of our code runs. Measured with
``bench/abuse.py`` on two cores: a client flooding even the cheapest refused
request (garbage bytes, 48 in flight) at ~2,700 calls/s saturates the broker and
multiplies everyone else's GetStatus p99 by 20. Bounding each field
(``certbroker.bounds``) makes one bad request cheap; this bounds how many of
them one peer gets served.

Two rules per peer (the mTLS client-certificate name, so every connection of a
client shares them; without TLS the connection's address):

* **In flight**: at most ``max_in_flight`` unary calls at once (WatchStatus
  streams are bounded elsewhere and not counted while they run). One more is
  refused at once: ``RESOURCE_EXHAUSTED`` ``TOO_MANY_IN_FLIGHT`` + RetryInfo.
* **Bad requests**: a token bucket. Each call no data could have made right
  (see :func:`spends_budget`: bytes that do not parse, no identity or role, a
  method the role may not call) spends a token. While the bucket is empty every call of
  that peer is refused ``TOO_MANY_BAD_REQUESTS`` with RetryInfo (until the next
  token, at least :data:`PENALTY`), and the refusal is *held* about
  :data:`PENALTY` before it is sent. A client that waits as told loses nothing
  by the hold; one that retries at once gets one answer per call it has in
  flight per second, instead of thousands. Each hold is drawn from ±50 % of it:
  calls held together would otherwise come back together, once a second, and
  the few let in then (the refilled tokens, the most expensive bad requests
  among them) would run back to back and stall the loop for everyone. Held
  calls count in flight, so the parked calls (and the request bytes they hold)
  stay bounded by ``max_in_flight``; past it, refusals ``TOO_MANY_IN_FLIGHT`` are
  held the same way, up to another ``max_in_flight`` of them, then immediate. Without
  an in-flight cap nothing bounds the parked calls, so refusals are not held.

Both checks run before the request is parsed or validated: the interceptor
gives gRPC no deserializer (the behaviour gets the raw bytes) and parses in its
own behaviour once the call is admitted. Messages over gRPC's receive limit are
refused by gRPC itself and never reach this module.

Why a well-formed request refused INVALID_ARGUMENT does not spend the budget:
the platform API is ONE client relaying every tenant's input, so counting the
names tenants mistype would let one tenant (careless, or typing garbage on
purpose at 11 a second) have every call of the platform refused, every other
tenant's included. Such answers have a bucket of their own instead, of the same
size, with a gentler consequence: while it is empty, each further INVALID_ARGUMENT
*answer* of that peer is held about :data:`PENALTY` before it is sent, and
nothing else is refused or delayed. The platform's valid calls keep flowing (only
the mistyped ones come back a second later), while a client flooding invalid
requests gets one answer per call in flight per second: without it, 144 workers
sending well-formed invalid requests at ~1,700 calls/s took both cores and GetStatus
p99 from 2.3 ms to 790 ms for everyone (``bench/abuse.py --mode per-kind``). Router-id conflicts
(``ROUTER_ID_*``) do not spend it either: a fleet moving to a new certificate
gets them at each report until the old ids are forgotten, and must still get its
certificates. Health checks are never counted nor refused.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from certbroker.api.errors import to_status
from certbroker.api.malformed import is_malformed
from certbroker.errors import ResourceExhausted
from certbroker.limits import Bucket

log = logging.getLogger(__name__)

TOO_MANY_IN_FLIGHT = "TOO_MANY_IN_FLIGHT"
TOO_MANY_BAD_REQUESTS = "TOO_MANY_BAD_REQUESTS"
#: Codes of calls a client got wrong whatever their data: no identity or role, a
#: method its role may not call. Not INVALID_ARGUMENT of a request that parsed (the
#: data's mistake: a tenant's typo relayed by the platform), NOT_FOUND (polling a
#: name before it is added is normal), FAILED_PRECONDITION (a business rule) nor
#: OUT_OF_RANGE (REVISION_COMPACTED: the protocol's "resync from 0", which every
#: router of a fleet sharing one certificate gets at once after a long partition).
BAD_CODES = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
#: PERMISSION_DENIED reasons of the router registry (an id held by another
#: certificate, an id that is not the certificate's name): its answer to one report,
#: sent at the report interval, not a client in a loop.
_REGISTRY_REASON = "ROUTER_ID_"
#: Methods never counted nor refused: a load balancer or router asking whether the
#: broker serves must hear the truth, whatever else its identity sent.
_EXEMPT = ("/grpc.health.v1.Health/",)
_DETAILS_KEY = "grpc-status-details-bin"
#: RetryInfo of a call over the in-flight cap: about what one call takes.
IN_FLIGHT_RETRY = timedelta(seconds=1)
#: How long a refusal to a peer out of bad-request tokens is held, and its shortest
#: RetryInfo: with 10 tokens a second, "retry in 100 ms" would let a flood of 50
#: calls in flight come back 500 times a second.
PENALTY = timedelta(seconds=1)
#: Peers remembered at most; beyond it, peers with nothing in flight are forgotten
#: (their spent budget forgiven): memory stays bounded whatever the peers.
MAX_PEERS = 100_000
_LOG_EVERY = 60.0  # seconds between two warnings about refusals


@dataclass(frozen=True)
class Refusal:
    """A call not admitted: the reason, when to retry, and how long to hold the answer."""

    reason: str
    message: str
    retry_after: timedelta
    hold: timedelta  # zero: answer at once (nothing was counted for it)
    parked: bool = False  # held over the in-flight cap: :meth:`PeerLimits.unpark` after


@dataclass
class _Peer:
    in_flight: int
    tokens: float
    at: float  # when ``tokens`` was last brought up to date (monotonic seconds)
    invalid_tokens: float = math.inf  # the INVALID_ARGUMENT answers' bucket (set on creation)
    parked: int = 0  # refusals over the in-flight cap being held


class PeerLimits:
    """The counting, with no gRPC in it: who may start a call now.

    Every :meth:`admit` that returns ``None`` or a held refusal is paired with
    one :meth:`release` (same ``counted``; ``True`` for a held refusal).
    """

    def __init__(
        self,
        max_in_flight: int,
        bad_requests: Bucket | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self.max_in_flight = max_in_flight  # 0: no cap
        self._burst = float(bad_requests.capacity) if bad_requests else 0.0
        self._rate = (
            bad_requests.capacity / bad_requests.period.total_seconds() if bad_requests else 0.0
        )
        self._monotonic = monotonic
        self._jitter = jitter  # 0 <= x < 1
        self._max_peers = max_peers
        self._peers: dict[str, _Peer] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.max_in_flight or self._rate)

    def in_flight(self, peer: str) -> int:
        state = self._peers.get(peer)
        return state.in_flight if state else 0

    def admit(self, peer: str, *, counted: bool = True) -> Refusal | None:
        """``None``: go ahead (counted in flight when ``counted``); else why not."""
        state = self._state(peer)
        capped = self.max_in_flight > 0 and state.in_flight >= self.max_in_flight
        if self._rate and state.tokens < 1:
            # whole seconds: "retry in 1199.996s" says nothing more than 1200
            wait = max(PENALTY.total_seconds(), math.ceil((1 - state.tokens) / self._rate))
            held = self.max_in_flight > 0 and not capped
            if held:
                state.in_flight += 1
            return Refusal(
                TOO_MANY_BAD_REQUESTS,
                f"too many refused requests from this client; retry in {wait:g}s",
                timedelta(seconds=wait),
                PENALTY * (0.5 + self._jitter()) if held else timedelta(0),
            )
        if counted and capped:
            # Held too (up to another max_in_flight of them, then at once): answered at
            # once, a client whose calls sit held (its invalid answers) would resend as
            # fast as the refusals come back, thousands a second.
            parked = state.parked < self.max_in_flight
            if parked:
                state.parked += 1
            return Refusal(
                TOO_MANY_IN_FLIGHT,
                f"this client has {state.in_flight} calls in flight; the limit is "
                f"{self.max_in_flight}",
                IN_FLIGHT_RETRY,
                PENALTY * (0.5 + self._jitter()) if parked else timedelta(0),
                parked=parked,
            )
        if counted:
            state.in_flight += 1
        return None

    def unpark(self, peer: str) -> None:
        """A held refusal over the in-flight cap was answered."""
        state = self._state(peer)
        state.parked -= 1
        self._forget_if_idle(peer, state)

    def invalid_answer(self, peer: str) -> timedelta:
        """A call of ``peer`` (still in flight) is being answered INVALID_ARGUMENT: how
        long to hold that answer (zero while its invalid-answers bucket has tokens)."""
        if not self._rate:
            return timedelta(0)
        state = self._state(peer)
        if state.invalid_tokens >= 1:
            state.invalid_tokens -= 1
            return timedelta(0)
        return PENALTY * (0.5 + self._jitter())

    def release(self, peer: str, *, counted: bool = True, bad: bool = False) -> None:
        """A call :meth:`admit` let in (or held) ended; ``bad``: it was the caller's mistake."""
        state = self._state(peer)
        if counted:
            state.in_flight -= 1
        if bad and self._rate:
            state.tokens = max(0.0, state.tokens - 1)
        self._forget_if_idle(peer, state)

    def _forget_if_idle(self, peer: str, state: _Peer) -> None:
        if (
            state.in_flight <= 0
            and state.parked <= 0
            and state.tokens >= self._burst
            and state.invalid_tokens >= self._burst
        ):
            del self._peers[peer]  # idle with full budgets: nothing worth remembering

    def _state(self, peer: str) -> _Peer:
        now = self._monotonic()
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= self._max_peers:
                self._forget_idle()
            state = self._peers[peer] = _Peer(0, self._burst, now, self._burst)
        elif self._rate:
            refill = (now - state.at) * self._rate
            state.tokens = min(self._burst, state.tokens + refill)
            state.invalid_tokens = min(self._burst, state.invalid_tokens + refill)
        state.at = now
        return state

    def _forget_idle(self) -> None:
        for peer in [p for p, s in self._peers.items() if s.in_flight <= 0 and s.parked <= 0]:
            del self._peers[peer]


class Fairness(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Applies :class:`PeerLimits` to every unary-request method, before its request is parsed.

    ``who`` names the peer of a call (``Authorizer.peer``). Listed before the other
    interceptors, it wraps what they built, so the malformed-request guard's
    parser runs only for admitted calls. ``count(method, code)`` counts the calls
    answered here, which the servicer never sees (``certbroker_rpc_requests_total``):
    the refusals, and the requests that did not parse.
    """

    def __init__(
        self,
        limits: PeerLimits,
        who: Callable[[grpc.aio.ServicerContext], str],
        count: Callable[[str, str], None] | None = None,
    ) -> None:
        self._limits = limits
        self._who = who
        self._count = count or _uncounted
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._refused = 0
        self._logged_at = -_LOG_EVERY

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not self._limits.enabled:
            return handler
        method = cast(str, handler_call_details.method)
        if method.startswith(_EXEMPT):
            return handler
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:  # handlers are reused: wrap once
            known = (handler, self._wrap(handler, method.rsplit("/", 1)[-1]))
            self._wrapped[method] = known
        return known[1]

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        fields = cast(Any, handler)  # grpc's handlers are namedtuples
        if fields.request_streaming:
            return handler  # reflection only: its requests are read by the servicer
        name = "unary_stream" if fields.response_streaming else "unary_unary"
        behavior = getattr(fields, name)
        parse = fields.request_deserializer or _as_is
        counted = not fields.response_streaming
        if inspect.isasyncgenfunction(behavior):
            wrapped: Callable[..., Any] = self._generator(behavior, parse, method)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = self._coroutine(behavior, parse, counted, method)
        else:
            return handler  # a synchronous behaviour: not one of ours
        replaced: grpc.RpcMethodHandler = fields._replace(
            request_deserializer=None, **{name: wrapped}
        )
        return replaced

    def _coroutine(
        self,
        behavior: Callable[..., Awaitable[Any]],
        parse: Callable[[bytes], Any],
        counted: bool,
        method: str,
    ) -> Callable[..., Awaitable[Any]]:
        async def admitted(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            peer = self._who(context)
            await self._check(peer, context, counted, method)
            _CALLER.set((self._limits, peer))
            request: Any = None
            try:
                request = parse(raw)
                return await behavior(request, context)
            finally:
                bad = self._ended(request, context, method)
                self._limits.release(peer, counted=counted, bad=bad)

        return admitted

    def _generator(
        self,
        behavior: Callable[..., AsyncIterator[Any]],
        parse: Callable[[bytes], Any],
        method: str,
    ) -> Callable[..., AsyncIterator[Any]]:
        async def admitted(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            peer = self._who(context)
            await self._check(peer, context, False, method)
            _CALLER.set((self._limits, peer))
            request: Any = None
            try:
                request = parse(raw)
                async for response in behavior(request, context):
                    yield response
            finally:
                bad = self._ended(request, context, method)
                self._limits.release(peer, counted=False, bad=bad)

        return admitted

    def _ended(self, request: Any, context: grpc.aio.ServicerContext, method: str) -> bool:
        """Whether the call spends the peer's budget; counts garbage (the servicer never ran)."""
        if is_malformed(request):
            self._count(method, grpc.StatusCode.INVALID_ARGUMENT.name)
            return True
        return spends_budget(context.code(), _reason(context))

    async def _check(
        self, peer: str, context: grpc.aio.ServicerContext, counted: bool, method: str
    ) -> None:
        """Return if the call may go on; else answer the refusal (after its hold) and abort."""
        refusal = self._limits.admit(peer, counted=counted)
        if refusal is None:
            return
        self._note(peer, refusal)
        self._count(method, grpc.StatusCode.RESOURCE_EXHAUSTED.name)
        if refusal.hold:
            try:
                await asyncio.sleep(refusal.hold.total_seconds())
            finally:
                if refusal.parked:
                    self._limits.unpark(peer)
                else:
                    self._limits.release(peer)
        error = ResourceExhausted(
            refusal.message, retry_after=refusal.retry_after, reason=refusal.reason
        )
        await context.abort_with_status(to_status(error))

    def _note(self, peer: str, refusal: Refusal) -> None:
        """A warning at most once a minute, with how many calls were refused since the last."""
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at < _LOG_EVERY:
            return
        log.warning(
            "refusing calls from %s: %s (%d refused since the last such line)",
            peer[:200],
            refusal.reason,
            self._refused,
        )
        self._refused = 0
        self._logged_at = now


#: The limits and peer of the call this task serves (set once it is admitted), for
#: :func:`before_answer`, which the servicer awaits before sending the answer.
_CALLER: ContextVar[tuple[PeerLimits, str] | None] = ContextVar("fairness_caller", default=None)


async def before_answer(code: grpc.StatusCode) -> None:
    """Hold an INVALID_ARGUMENT answer while its peer's invalid-answers bucket is empty.

    Awaited by the servicer just before it sends an error: gRPC sends a status the
    moment it is aborted with, so only the code answering can hold it.
    """
    caller = _CALLER.get()
    if code is not grpc.StatusCode.INVALID_ARGUMENT or caller is None:
        return
    limits, peer = caller
    hold = limits.invalid_answer(peer)
    if hold:
        await asyncio.sleep(hold.total_seconds())


def spends_budget(code: grpc.StatusCode | None, reason: Callable[[], str]) -> bool:
    """A call that ended ``code`` was the client's mistake whatever its data (see the
    module's docstring); ``reason`` is asked only when the code alone does not say."""
    if code not in BAD_CODES:
        return False
    return code is not grpc.StatusCode.PERMISSION_DENIED or not reason().startswith(
        _REGISTRY_REASON
    )


def _reason(context: grpc.aio.ServicerContext) -> Callable[[], str]:
    """The ErrorInfo reason the call was answered with (``""`` if none), read when asked."""

    def read() -> str:
        for key, value in context.trailing_metadata() or ():
            if key == _DETAILS_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    info = error_details_pb2.ErrorInfo()
                    if detail.Unpack(info):
                        return str(info.reason)
        return ""

    return read


def _uncounted(method: str, code: str) -> None:
    del method, code


def _as_is(raw: bytes) -> bytes:
    return raw
