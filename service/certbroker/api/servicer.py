"""The gRPC servicer: thin. Decode the request, call the use case, encode the answer.

Errors are mapped in one place (``_unary`` / ``_stream``); no RPC has its own
try/except. That place also tells telemetry how each call ended: the RPC's
span gets the real ``rpc.grpc.status_code`` and ERROR status (the OpenTelemetry
interceptor only sees ``abort()``, not ``abort_with_status()``, and would leave
a refused call looking like a success), and ``certbroker_rpc_requests_total``
counts it by method and code.

Every non-OK code is an ERROR span, the caller's mistakes included (the
semantic conventions would leave INVALID_ARGUMENT or NOT_FOUND unset on a
server span): an operator searching traces for failures wants the refused
calls too, and the code attribute tells them apart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from certbroker import tenancy
from certbroker.api import convert
from certbroker.api.auth import ACROSS_TENANTS, Authorizer, Permission, grants
from certbroker.api.errors import internal, to_status
from certbroker.api.fairness import before_answer
from certbroker.app import Broker, encode_page_token
from certbroker.bounds import MAX_PAGE_BYTES, check_watch_filters
from certbroker.clock import Clock
from certbroker.doctor import Doctor
from certbroker.errors import (
    BrokerError,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from certbroker.events import EventHub
from certbroker.housekeeping import ChallengeEvents
from certbroker.metrics import Metrics
from certbroker.model import Domain, Event, EventType
from certbroker.names import normalise_domain
from certbroker.routers import RouterRegistry
from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
_SNAPSHOT_PAGE = 500
# Pages of unfiltered snapshots kept for other streams to send (a reconnect storm reads
# in near lockstep): a window of a few thousand names, never the whole snapshot.
_SHARED_PAGES = 8
_PAGE_KEEP = 10.0  # seconds a shared page stays for later streams (decrypted keys in it)
# A snapshot batch (WatchStatusRequest.batch_snapshot) closes once its events reach this
# many bytes: far below gRPC's default 4 MiB receive limit, large enough that a
# snapshot of 100,000 names takes a few hundred messages rather than 100,000.
_BATCH_BYTES = 1 << 20
_EVENT_CACHE = 4096
_NAMES_PER_SLICE = 16  # watch filter names normalised between two yields to the loop
_SERVICE = broker_pb2.DESCRIPTOR.services_by_name["CertificateBrokerService"].full_name
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"


def _failed(status: grpc.Status) -> grpc.Status:
    """Mark the current RPC span with the code the caller will get; return the status."""
    span = trace.get_current_span()
    if span.is_recording():
        code: grpc.StatusCode = status.code
        span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {status.details}"))
    return status


@dataclass(frozen=True)
class _Form:
    """How a stream wants its snapshot: with keys or not, in batches or one event a message."""

    keys: bool
    batch: bool


@dataclass(frozen=True)
class _Page:
    """One page of a snapshot as sent, built once and sent by every stream that reads it."""

    responses: list[broker_pb2.WatchStatusResponse]
    newer: dict[str, int]  # domains whose row is already newer than the snapshot revision
    next_after: str | None  # the name the next page starts after; None on the last page


# Which shared page: (snapshot revision, its form, the name the page starts after).
_PageKey = tuple[int, _Form, str]


@dataclass
class _Shared:
    """A shared page being built or built, and the timer that drops it."""

    build: asyncio.Future[_Page]
    expiry: asyncio.TimerHandle | None = None

    def release(self) -> None:
        """Stop the timer: a pending timer would keep the page (its args) in memory."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None


def _unary(
    method: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            response = await method(self, request, context)
        except BrokerError as error:
            status = _failed(to_status(error))
        except Exception:
            log.exception("unexpected error in %s", name)
            status = _failed(internal())
        except asyncio.CancelledError:  # the client went away, or the server stops
            self._metrics.rpc_finished(name, "CANCELLED")
            raise
        else:
            self._metrics.rpc_finished(name, "OK")
            return response
        self._metrics.rpc_finished(name, status.code.name)
        await before_answer(status.code)
        await context.abort_with_status(status)
        raise AssertionError("unreachable")  # abort_with_status always raises

    return wrapper


def _stream(
    method: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[None]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[None]]:
    """Server-streaming handlers write with ``context.write`` (so a send can time out).

    The stream's span is opened here (the interceptor skips streams written with
    ``context.write``, see ``certbroker.telemetry``), so the mapper can mark it.
    """
    name = method.__name__
    span_name = f"/{_SERVICE}/{name}"

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> None:
        status = None
        code = "OK"
        try:
            with self._tracer.start_as_current_span(span_name, kind=trace.SpanKind.SERVER):
                try:
                    await method(self, request, context)
                except BrokerError as error:
                    status = _failed(to_status(error))
                except Exception:
                    if not self.stopping:  # else the server went away under it: not an error
                        log.exception("unexpected error in %s", name)
                        status = _failed(internal())
                except asyncio.CancelledError:  # the client closed the stream
                    code = "CANCELLED"
                    raise
        finally:
            self._metrics.rpc_finished(name, code if status is None else status.code.name)
        if status is not None:  # after the span ended: its status stays the mapped one
            await before_answer(status.code)
            await context.abort_with_status(status)

    return wrapper


class BrokerServicer(broker_pb2_grpc.CertificateBrokerServiceServicer):
    def __init__(
        self,
        broker: Broker,
        hub: EventHub,
        clock: Clock,
        authorizer: Authorizer,
        heartbeat: timedelta,
        max_lag: int,
        send_timeout: timedelta = timedelta(seconds=30),
        tracer: trace.Tracer | None = None,
        challenges: ChallengeEvents | None = None,
        routers: RouterRegistry | None = None,
        doctor: Doctor | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._doctor = doctor
        self._challenges = challenges
        self.watchers = 0  # open WatchStatus streams (a gauge for metrics and tests)
        self._routers = routers if routers is not None else RouterRegistry(clock)
        self._cursors: set[_Cursor] = set()  # each open stream's position, for its lag
        self._metrics = metrics or Metrics()
        self._metrics.watch_streams(lambda: self.watchers, self.watch_lag)
        self._send_timeout = send_timeout.total_seconds()
        self.stopping = False
        self._tracer = tracer or trace.NoOpTracer()
        self._broker = broker
        self._hub = hub
        self._clock = clock
        self._auth = authorizer
        self._heartbeat = heartbeat.total_seconds()
        self._max_lag = max_lag
        self._event_cache: OrderedDict[int, broker_pb2.WatchStatusResponse] = OrderedDict()
        self._pages: OrderedDict[_PageKey, _Shared] = OrderedDict()

    def _domain(self, record: Domain) -> Any:
        return convert.domain(record, self._clock.now())

    def _status(self, record: Domain) -> Any:
        """The domain as unary replies show it: with how many live routers serve it."""
        return convert.with_routers(self._domain(record), self._routers.counts())

    def watch_lag(self) -> int:
        """Revisions the furthest-behind open stream has yet to handle (0 without streams).

        Read from the metrics scrape thread: iterates a copy, never the live set.
        """
        head = self._hub.revision
        return max((head - cursor.position for cursor in list(self._cursors)), default=0)

    @_unary
    async def IssueCertificate(
        self, request: broker_pb2.IssueCertificateRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.IssueCertificateResponse:
        self._auth.require(context, Permission.MANAGE)
        record = await self._broker.issue_certificate(
            request.domain,
            request.app,
            disable_letsencrypt=request.disable_letsencrypt,
            key_algorithm=convert.key_algorithm(request.key_algorithm),
            challenge=convert.challenge_type(request.challenge_type),
            include_apex=request.include_apex,
            renew=request.renew,
        )
        return broker_pb2.IssueCertificateResponse(domain=self._status(record))

    @_unary
    async def UploadCustom(
        self, request: broker_pb2.UploadCustomRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.UploadCustomResponse:
        role = self._auth.require(context, Permission.MANAGE)
        record = await self._broker.upload_custom(
            request.domain,
            tenancy.acting_app(request.app, role in ACROSS_TENANTS),
            request.certificate,
            request.private_key,
        )
        return broker_pb2.UploadCustomResponse(domain=self._status(record))

    @_unary
    async def DeleteCustom(
        self, request: broker_pb2.DeleteCustomRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.DeleteCustomResponse:
        role = self._auth.require(context, Permission.MANAGE)
        record = await self._broker.delete_custom(
            request.domain, tenancy.acting_app(request.app, role in ACROSS_TENANTS)
        )
        return broker_pb2.DeleteCustomResponse(domain=self._status(record))

    @_unary
    async def GetStatus(
        self, request: broker_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.GetStatusResponse:
        self._auth.require(context, Permission.READ)
        record = await self._broker.get_status(request.domain, request.app)
        return broker_pb2.GetStatusResponse(domain=self._status(record))

    @_unary
    async def RemoveDomain(
        self, request: broker_pb2.RemoveDomainRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.RemoveDomainResponse:
        role = self._auth.require(context, Permission.MANAGE)
        revision = await self._broker.remove_domain(
            request.domain, tenancy.acting_app(request.app, role in ACROSS_TENANTS)
        )
        return broker_pb2.RemoveDomainResponse(revision=revision)

    @_unary
    async def ListDomains(
        self, request: broker_pb2.ListDomainsRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.ListDomainsResponse:
        self._auth.require(context, Permission.READ)
        page = await self._broker.list_domains(request.app, request.page_size, request.page_token)
        domains: list[domain_pb2.Domain] = []
        token = page.next_page_token
        size = 0
        for record in page.domains:  # a page of domains with long chains can outgrow a reply
            message = self._status(record)
            size += message.ByteSize()
            if domains and size > MAX_PAGE_BYTES:
                token = encode_page_token(domains[-1].domain)
                break
            domains.append(message)
        return broker_pb2.ListDomainsResponse(domains=domains, next_page_token=token)

    @_unary
    async def ReportServing(
        self, request: broker_pb2.ReportServingRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.ReportServingResponse:
        self._auth.require(context, Permission.REPORT)
        identity, _ = self._auth.caller(context)
        self._routers.report(
            request.router_id, identity, request.applied_revision, request.domain_count
        )
        return convert.report_reply(self._hub.revision, self._routers.interval)

    @_unary
    async def ListRouters(
        self, request: broker_pb2.ListRoutersRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.ListRoutersResponse:
        role = self._auth.require(context, Permission.READ)
        page = self._routers.page(request.page_size, request.page_token)
        # Which certificate each router reports with is for operators (api/admin), not
        # for the routers themselves: one router must not learn the others' names.
        return convert.routers(
            page,
            self._hub.revision,
            self._routers.interval,
            identities=grants(role, Permission.MANAGE),
        )

    @_unary
    async def CheckDomain(
        self, request: broker_pb2.CheckDomainRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.CheckDomainResponse:
        self._auth.require(context, Permission.MANAGE)  # it sends DNS and HTTP requests
        if self._doctor is None:
            raise Unavailable("the doctor is not set up on this broker", reason="NOT_CONFIGURED")
        return convert.doctor_report(await self._doctor.check(request.domain, request.app))

    @_stream
    async def WatchStatus(
        self, request: broker_pb2.WatchStatusRequest, context: grpc.aio.ServicerContext
    ) -> None:
        span = trace.get_current_span()  # opened by _stream
        span.set_attribute("certbroker.after_revision", request.after_revision)
        span.set_attribute("certbroker.include_keys", request.include_keys)
        # Challenge events are only written while some router asks for them.
        challenges = self._challenges if request.include_challenges else None
        if challenges is not None:
            challenges.add_listener()
        self.watchers += 1
        cursor = _Cursor(request.after_revision or self._hub.revision)
        self._cursors.add(cursor)
        try:
            await self._watch(request, context, cursor)
        finally:
            self._cursors.discard(cursor)
            self.watchers -= 1
            if challenges is not None:
                challenges.remove_listener()

    async def _watch(
        self,
        request: broker_pb2.WatchStatusRequest,
        context: grpc.aio.ServicerContext,
        cursor: _Cursor,
    ) -> None:
        self._auth.require(context, Permission.READ)
        if request.include_keys:
            self._auth.require(context, Permission.KEYS)
        if request.after_revision < 0:
            raise InvalidArgument.one("after_revision", "must not be negative")
        wanted = await _Filter.parse(request, self._broker.normalise)
        position = request.after_revision
        seen: dict[str, int] = {}
        send = _Sender(context, self._send_timeout)
        if position == 0:
            position = self._hub.revision
            form = _Form(keys=request.include_keys, batch=request.batch_snapshot)
            async for response in self._snapshot(wanted, form, position, seen):
                await send(response, position)
        async for item in self._hub.follow(position, self._heartbeat):
            if isinstance(item, int):
                await send(
                    broker_pb2.WatchStatusResponse(heartbeat=broker_pb2.Heartbeat(revision=item)),
                    position,
                )
                continue
            lag = self._hub.revision - item.revision
            if lag > self._max_lag:
                raise _too_slow(position, f"fell {lag} events behind")
            position = cursor.position = item.revision
            if not wanted.matches(item) or seen.get(item.domain_name, 0) >= item.revision:
                continue
            is_challenge = item.type in (EventType.CHALLENGE_ADDED, EventType.CHALLENGE_REMOVED)
            if is_challenge and not request.include_challenges:
                continue
            await send(await self._event_response(item, request.include_keys), position)
        raise Unavailable(
            f"the broker is shutting down; resume with after_revision={position}",
            reason="BROKER_SHUTTING_DOWN",
        )

    async def _snapshot(
        self, wanted: _Filter, form: _Form, revision: int, seen: dict[str, int]
    ) -> AsyncIterator[broker_pb2.WatchStatusResponse]:
        """Every domain ``wanted`` as of ``revision`` or later, a page at a time.

        Each page costs the store a fixed number of queries (its rows, their
        certificates, and with keys their sealed keys), whatever its length.
        """
        pages = (
            self._all_pages(form, revision)
            if wanted.everything
            else self._filtered_pages(wanted, form, revision)
        )
        async for page in pages:
            seen.update(page.newer)
            for response in page.responses:
                yield response
        yield broker_pb2.WatchStatusResponse(
            event=broker_pb2.WatchEvent(
                revision=revision,
                type=broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE,
            )
        )

    async def _all_pages(self, form: _Form, revision: int) -> AsyncIterator[_Page]:
        after: str | None = ""
        while after is not None:
            page = await self._shared_page(revision, form, after)
            yield page
            after = page.next_after

    async def _filtered_pages(
        self, wanted: _Filter, form: _Form, revision: int
    ) -> AsyncIterator[_Page]:
        """The pages of a filtered stream: only its domains are read, not every domain.

        Named domains are looked up by name (as many as the request names); apps
        are read through the store's index on ``(app, name)``, one app after the
        other. A router of a small app among 100,000 names reads its own.
        """
        if wanted.domains:
            names = sorted(wanted.domains)
            for start in range(0, len(names), _SNAPSHOT_PAGE):
                records = await self._broker.snapshot_domains(names[start : start + _SNAPSHOT_PAGE])
                yield await self._page(records, wanted, form, revision)
            return
        for app in sorted(wanted.apps):
            after = ""
            while True:
                records = await self._broker.snapshot_page(after, _SNAPSHOT_PAGE, app=app)
                yield await self._page(records, wanted, form, revision)
                if len(records) < _SNAPSHOT_PAGE:
                    break
                after = records[-1].name

    async def _shared_page(self, revision: int, form: _Form, after: str) -> _Page:
        """A page of the unfiltered snapshot at ``revision``, built once for every stream.

        A burst of routers reconnecting after a restart would otherwise each read,
        decrypt and convert every domain. At most ``_SHARED_PAGES`` pages are kept,
        each for ``_PAGE_KEEP`` seconds, so memory stays a few pages whatever the
        number of domains and no decrypted key stays in memory for long; a stream
        far behind the others builds its pages again. Pages with keys are keyed
        apart and only ever reach streams allowed keys.
        """
        key = (revision, form, after)
        shared = self._pages.get(key)
        if shared is None:
            build = asyncio.ensure_future(self._unfiltered_page(form, revision, after))
            shared = _Shared(build)
            shared.expiry = asyncio.get_running_loop().call_later(
                _PAGE_KEEP, self._forget, key, shared
            )
            self._pages[key] = shared
            build.add_done_callback(functools.partial(self._forget_failed, key, shared))
            while len(self._pages) > _SHARED_PAGES:
                self._pages.popitem(last=False)[1].release()
        else:
            self._pages.move_to_end(key)
        return await asyncio.shield(shared.build)

    def _forget(self, key: _PageKey, shared: _Shared) -> None:
        if self._pages.get(key) is shared:
            del self._pages[key]
        shared.release()

    def _forget_failed(self, key: _PageKey, shared: _Shared, build: asyncio.Future[_Page]) -> None:
        if build.cancelled() or build.exception() is not None:
            self._forget(key, shared)

    async def _unfiltered_page(self, form: _Form, revision: int, after: str) -> _Page:
        records = await self._broker.snapshot_page(after, _SNAPSHOT_PAGE)
        page = await self._page(records, _Filter(), form, revision)
        if len(records) == _SNAPSHOT_PAGE:
            return replace(page, next_after=records[-1].name)
        return page

    async def _page(
        self, records: list[Domain], wanted: _Filter, form: _Form, revision: int
    ) -> _Page:
        """The snapshot events of ``records`` that ``wanted`` matches, keyed in one read."""
        chosen = [record for record in records if wanted.matches_domain(record)]
        materials = await self._broker.serving_materials(chosen) if form.keys else {}
        now = self._clock.now()
        responses: list[broker_pb2.WatchStatusResponse] = []
        newer = {}
        size = _BATCH_BYTES  # no batch open yet
        for record in chosen:
            if record.revision > revision:
                newer[record.name] = record.revision
            if not form.batch:
                responses.append(broker_pb2.WatchStatusResponse())
                message = responses[-1].event
            else:
                if size >= _BATCH_BYTES:
                    responses.append(broker_pb2.WatchStatusResponse())
                    responses[-1].snapshot_batch.SetInParent()
                    size = 0
                message = responses[-1].snapshot_batch.events.add()
            # written in place: a snapshot builds 100,000 events, and a copy costs as much
            message.revision = record.revision
            message.type = broker_pb2.EVENT_TYPE_SNAPSHOT
            convert.fill_domain(message.domain, record, now)
            found = materials.get(record.name)
            if found is not None:
                convert.fill_material(message.serving, found)
            if form.batch:
                size += message.ByteSize()
        return _Page(responses, newer, None)

    async def _event_response(
        self, item: Event, include_keys: bool
    ) -> broker_pb2.WatchStatusResponse:
        cached = self._event_cache.get(item.revision)
        if cached is None:  # converted once, shared by every stream that sends it
            cached = broker_pb2.WatchStatusResponse(event=convert.event(item, self._clock.now()))
            self._event_cache[item.revision] = cached
            if len(self._event_cache) > _EVENT_CACHE:
                self._event_cache.popitem(last=False)
        if not include_keys or item.domain is None or item.type is not EventType.DOMAIN_UPDATED:
            return cached
        message = broker_pb2.WatchEvent()
        message.CopyFrom(cached.event)
        await self._attach_material(message, item.domain)
        return broker_pb2.WatchStatusResponse(event=message)

    async def _attach_material(self, message: broker_pb2.WatchEvent, record: Domain) -> None:
        found = await self._broker.serving_material(record)
        if found is not None:
            message.serving.CopyFrom(convert.material(found))


class _Cursor:
    """Where one open stream is in the event log (the last revision it handled)."""

    __slots__ = ("position",)

    def __init__(self, position: int) -> None:
        self.position = position


def _too_slow(position: int, why: str) -> ResourceExhausted:
    return ResourceExhausted(
        f"watcher {why}; resume with after_revision={position}",
        retry_after=timedelta(seconds=1),
        reason="WATCHER_TOO_SLOW",
    )


class _Sender:
    """Writes one response, ending a stream whose reader stalls longer than ``timeout``.

    HTTP/2 flow control bounds what a stalled reader holds (its window), and the
    stream pulls events from the shared hub rather than owning a queue, so a
    stuck router costs a parked coroutine, then nothing.
    """

    def __init__(self, context: grpc.aio.ServicerContext, timeout: float) -> None:
        self._context = context
        self._timeout = timeout

    async def __call__(self, response: broker_pb2.WatchStatusResponse, position: int) -> None:
        try:  # asyncio.timeout: no Task per message, unlike wait_for (fan-out hot path)
            async with asyncio.timeout(self._timeout):
                await self._context.write(response)
        except TimeoutError:
            raise _too_slow(position, f"did not read for {self._timeout:g}s") from None


class _Filter:
    """The request's app and domain filters; empty means everything."""

    def __init__(self, apps: frozenset[str] = frozenset(), domains: frozenset[str] = frozenset()):
        self.apps = apps
        self.domains = domains
        self.everything = not self.apps and not self.domains

    @classmethod
    async def parse(
        cls,
        request: broker_pb2.WatchStatusRequest,
        normalise: Callable[[str, str], str] = normalise_domain,
    ) -> _Filter:
        """Counts and sizes first (no name read), then names, yielding to the loop as it goes.

        A 253-character IDN name costs up to ~0.6 ms of UTS46 and Punycode work, so
        each one gets its own turn; plain names go sixteen at a time.
        """
        check_watch_filters(request.apps, request.domains, tenancy.MAX_APP_LENGTH)
        names = []
        violations: list[FieldViolation] = []
        for index, raw in enumerate(request.domains):
            if not raw.isascii() or index % _NAMES_PER_SLICE == _NAMES_PER_SLICE - 1:
                await asyncio.sleep(0)
            try:
                names.append(normalise(raw, f"domains[{index}]"))
            except InvalidArgument as error:
                violations.extend(error.violations)
        if violations:
            raise InvalidArgument(violations)
        apps = frozenset(app.strip() for app in request.apps if app.strip())
        return cls(apps, frozenset(names))

    def matches_domain(self, record: Domain) -> bool:
        return (not self.apps or record.app in self.apps) and (
            not self.domains or record.name in self.domains
        )

    def matches(self, item: Event) -> bool:
        if self.domains and item.domain_name not in self.domains:
            return False
        if self.apps:
            return item.domain is not None and item.domain.app in self.apps
        return True
