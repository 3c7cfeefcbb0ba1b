"""A small typed async client for certbroker over ``grpc.aio``.

Why a wrapper over the generated stub: callers (the CLI, API services, routers)
should not repeat channel set-up, rich-error decoding or, above all, the watch
resume logic. ``watch()`` is where a hand-rolled loop goes wrong (resuming from
the wrong revision after a half-delivered snapshot, hammering a restarting
broker, missing a compaction), so it lives here once and is tested here once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, cast

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2

__all__ = [
    "DEFAULT_ADDR",
    "DEFAULT_REPORT_INTERVAL",
    "BrokerClient",
    "BrokerError",
    "FieldViolation",
    "TlsFiles",
    "WatchEvent",
]

WatchEvent = broker_pb2.WatchEvent
"""What ``watch()`` yields: the proto event itself (revision, type, domain, serving)."""

DEFAULT_ADDR: Final = "127.0.0.1:50051"
# How often routers report what they serve until the broker's reply says otherwise.
DEFAULT_REPORT_INTERVAL: Final = timedelta(seconds=10)

# Codes after which a watch reconnects on its own. UNAVAILABLE: broker down or
# restarting, connection lost. CANCELLED (seen as an error, so from the server
# side): the broker cancelled streams while stopping. ABORTED and
# RESOURCE_EXHAUSTED: the broker ended a slow stream and asks it to resume
# from its last revision. Everything else (auth, bad request) is the caller's
# problem and is raised.
_RESUMABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
REVISION_COMPACTED: Final = "REVISION_COMPACTED"
# The end-of-stream marker of ``call.read()``.
_EOF: Final[object] = grpc.aio.EOF


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS to the broker.

    ``ca`` verifies the broker's certificate; ``cert`` and ``key`` are this
    client's identity for mTLS (the broker derives the caller's role from it).
    ``server_name`` overrides the name checked in the broker's certificate,
    for brokers reached by IP address.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files and build channel credentials (OSError if unreadable)."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate and its key go together: give both or neither")
        root = self.ca.read_bytes() if self.ca is not None else None
        chain = self.cert.read_bytes() if self.cert is not None else None
        key = self.key.read_bytes() if self.key is not None else None
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=chain
        )


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field, from ``google.rpc.BadRequest``."""

    field: str
    description: str


class BrokerError(Exception):
    """A failed RPC, decoded from the ``google.rpc.Status`` the broker sends.

    Callers branch on ``code`` and ``reason`` (ErrorInfo, stable
    UPPER_SNAKE_CASE), never on ``message``. A plain class rather than a
    frozen dataclass: Python sets attributes on exceptions as they travel
    (``__notes__``, tracebacks), which a frozen instance would refuse.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after: timedelta | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        self.retry_after = retry_after

    @property
    def code_name(self) -> str:
        """``NOT_FOUND`` rather than ``StatusCode.NOT_FOUND``."""
        return str(self.code.name)

    def __str__(self) -> str:
        head = self.code_name + (f" ({self.reason})" if self.reason else "")
        return f"{head}: {self.message}" if self.message else head

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> BrokerError:
        """Decode an ``RpcError`` (aio or sync) and its rich status details.

        Details that fail to parse are ignored rather than raised: an error
        about an error would hide the original one.
        """
        code = _call_code(err)
        details = _call_details(err)
        status: status_pb2.Status | None = None
        try:
            status = rpc_status.from_call(cast(grpc.Call, err))
        except (ValueError, AttributeError, TypeError):
            status = None
        reason = ""
        metadata: dict[str, str] = {}
        violations: list[FieldViolation] = []
        retry_after: timedelta | None = None
        if status is not None:
            for any_detail in status.details:
                if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    any_detail.Unpack(info)
                    reason = info.reason
                    metadata = dict(info.metadata)
                elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    any_detail.Unpack(bad)
                    violations.extend(
                        FieldViolation(v.field, v.description) for v in bad.field_violations
                    )
                elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    any_detail.Unpack(retry)
                    retry_after = retry.retry_delay.ToTimedelta()
        return cls(
            code=code,
            message=details,
            reason=reason,
            metadata=metadata,
            violations=tuple(violations),
            retry_after=retry_after,
        )


def _call_code(err: grpc.RpcError) -> grpc.StatusCode:
    code = getattr(err, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _call_details(err: grpc.RpcError) -> str:
    details = getattr(err, "details", None)
    value = details() if callable(details) else None
    return value if isinstance(value, str) else ""


@dataclass
class _Backoff:
    """Exponential backoff with full jitter, capped, reset on progress.

    Full jitter spreads a fleet of routers that lost the same broker, so the
    restarted broker is not hit by all of them in the same millisecond.
    """

    initial: float = 0.1
    cap: float = 3.0
    attempt: int = 0

    def next_delay(self, at_least: float = 0.0) -> float:
        ceiling = min(self.cap, self.initial * (2**self.attempt))
        self.attempt += 1
        return max(at_least, random.uniform(ceiling / 2, ceiling))

    def reset(self) -> None:
        self.attempt = 0


class BrokerClient:
    """Async client for ``certbroker.v1.CertificateBrokerService``.

    Use as ``async with BrokerClient.connect(addr) as client: ...``. Unary
    calls raise ``BrokerError``; ``watch()`` reconnects by itself.
    """

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float | None = 30.0) -> None:
        """Wrap an existing channel (tests and callers with their own options)."""
        self._channel = channel
        self._stub: Any = broker_pb2_grpc.CertificateBrokerServiceStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._last_revision = 0
        self._resnapshots = 0
        self._snapshot_streams = 0
        self._report_interval = DEFAULT_REPORT_INTERVAL

    @classmethod
    def connect(
        cls,
        addr: str = DEFAULT_ADDR,
        *,
        tls: TlsFiles | None = None,
        timeout: float | None = 30.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> BrokerClient:
        """Open a channel to ``addr`` (host:port); plaintext unless ``tls`` is given.

        Connecting is lazy (gRPC connects on the first call), so this never
        blocks; an unreachable broker shows up as ``UNAVAILABLE`` on the first
        call. ``timeout`` is the deadline of each unary call.
        """
        # gRPC's own reconnect backoff grows to 120 s by default: a watcher
        # whose broker was down for a few minutes would then wait up to two
        # more minutes after it came back. Cap it like watch()'s backoff.
        # Not grpc.min_reconnect_backoff_ms: despite its name it is the deadline
        # of one connection attempt (TCP, TLS and the HTTP/2 preface), 20 s by
        # default; at 200 ms every call failed UNAVAILABLE against a broker that
        # answered a little late (a loaded host, a TLS handshake across regions).
        opts: list[tuple[str, Any]] = [
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 3000),
            # Pings on a quiet watch notice a dead broker in ~30 s, even behind a NAT
            # that drops idle flows (the broker permits one per 10 s).
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            *options,
        ]
        if tls is None:
            channel = grpc.aio.insecure_channel(addr, options=opts)
        else:
            if tls.server_name:
                opts.append(("grpc.ssl_target_name_override", tls.server_name))
            channel = grpc.aio.secure_channel(addr, tls.credentials(), options=opts)
        return cls(channel, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; running watches end."""
        await self._channel.close(grace=None)

    @property
    def last_revision(self) -> int:
        """The revision a watch would resume from if its stream broke now.

        It grows with each event and heartbeat; during an initial snapshot it
        stays where it was, because a snapshot cut in half must be redone
        rather than resumed.
        """
        return self._last_revision

    @property
    def resnapshots(self) -> int:
        """How many times ``watch()`` had to start over after ``REVISION_COMPACTED``."""
        return self._resnapshots

    @property
    def snapshot_streams(self) -> int:
        """How many streams ``watch()`` opened that start with a snapshot.

        A consumer collecting a snapshot compares it at each ``EVENT_TYPE_SNAPSHOT``:
        when it grew, the previous attempt was cut and restarted, so what was
        collected from it must be dropped (a name removed in between would
        otherwise survive the resync).
        """
        return self._snapshot_streams

    async def _unary(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as err:
            raise BrokerError.from_rpc_error(err) from None

    async def issue_certificate(
        self,
        domain: str,
        app: str,
        *,
        disable_letsencrypt: bool = False,
        key_algorithm: domain_pb2.KeyAlgorithm = domain_pb2.KEY_ALGORITHM_UNSPECIFIED,
        challenge_type: domain_pb2.ChallengeType = domain_pb2.CHALLENGE_TYPE_UNSPECIFIED,
        include_apex: bool = False,
        renew: bool = False,
    ) -> domain_pb2.Domain:
        """Register ``domain`` for ``app``; idempotent, and "retry now" for a known one.

        ``renew`` renews a current Let's Encrypt certificate now even if it is not
        due (rationed like "retry now", whatever the backoff).

        "Retry now" is rationed by the broker: a domain backing off after a
        failure may be forced once per interval, sooner calls raise
        ``RESOURCE_EXHAUSTED`` (reason ``RETRY_TOO_SOON``) with ``retry_after``.
        ``include_apex`` puts a wildcard's apex in the same certificate.
        """
        request = broker_pb2.IssueCertificateRequest(
            domain=domain,
            app=app,
            disable_letsencrypt=disable_letsencrypt,
            key_algorithm=key_algorithm,
            challenge_type=challenge_type,
            include_apex=include_apex,
            renew=renew,
        )
        response: broker_pb2.IssueCertificateResponse = await self._unary(
            "IssueCertificate", request
        )
        return response.domain

    async def upload_custom(
        self, domain: str, certificate: bytes, private_key: bytes, *, app: str = ""
    ) -> domain_pb2.Domain:
        """Install a custom certificate (PEM bundle or DER) and key; it serves at once.

        ``app`` is the caller's tenant, which must own the domain; leave it empty
        only as an operator (admin role, or a plaintext loopback broker).
        """
        request = broker_pb2.UploadCustomRequest(
            domain=domain, certificate=certificate, private_key=private_key, app=app
        )
        response: broker_pb2.UploadCustomResponse = await self._unary("UploadCustom", request)
        return response.domain

    async def delete_custom(self, domain: str, *, app: str = "") -> domain_pb2.Domain:
        """Remove the custom certificate; Let's Encrypt serves again at once (``app``: as above)."""
        request = broker_pb2.DeleteCustomRequest(domain=domain, app=app)
        response: broker_pb2.DeleteCustomResponse = await self._unary("DeleteCustom", request)
        return response.domain

    async def get_status(self, domain: str, *, app: str = "") -> domain_pb2.Domain:
        """The full status of one domain (NOT_FOUND when unknown).

        ``app``: the calling tenant; the broker then refuses a domain another app owns
        (FAILED_PRECONDITION, DOMAIN_OWNED_BY_OTHER_APP) instead of showing it.
        """
        request = broker_pb2.GetStatusRequest(domain=domain, app=app)
        response: broker_pb2.GetStatusResponse = await self._unary("GetStatus", request)
        return response.domain

    async def check_domain(self, domain: str, *, app: str = "") -> broker_pb2.CheckDomainResponse:
        """Run every pre-flight check of ``domain`` now (read-only; works before it is added).

        ``app`` is who owns, or would own, the domain (optional). The broker runs
        one check per domain every 10 s: sooner is RESOURCE_EXHAUSTED with
        ``retry_after`` set. Needs a role that may manage domains.
        """
        request = broker_pb2.CheckDomainRequest(domain=domain, app=app)
        response: broker_pb2.CheckDomainResponse = await self._unary("CheckDomain", request)
        return response

    async def remove_domain(self, domain: str, *, app: str = "") -> int:
        """Forget ``domain``; returns the revision of the removal event (``app``: as above)."""
        request = broker_pb2.RemoveDomainRequest(domain=domain, app=app)
        response: broker_pb2.RemoveDomainResponse = await self._unary("RemoveDomain", request)
        return response.revision

    async def list_domains(
        self, app: str | None = None, *, page_size: int = 500
    ) -> AsyncIterator[domain_pb2.Domain]:
        """Every domain (of ``app`` when given), fetching pages as the caller iterates."""
        token = ""
        while True:
            request = broker_pb2.ListDomainsRequest(
                app=app or "", page_size=page_size, page_token=token
            )
            response: broker_pb2.ListDomainsResponse = await self._unary("ListDomains", request)
            for domain in response.domains:
                yield domain
            token = response.next_page_token
            if not token:
                return

    async def report_serving(self, router_id: str, applied_revision: int, domain_count: int) -> int:
        """Tell the broker which revision this router serves (router role); its current revision.

        Call it every ``report_interval`` (:attr:`report_interval`, 10 s unless the broker
        says otherwise) and after each change applied: a router silent for three intervals
        stops counting as serving, one silent for ten is forgotten.
        """
        request = broker_pb2.ReportServingRequest(
            router_id=router_id, applied_revision=applied_revision, domain_count=domain_count
        )
        response: broker_pb2.ReportServingResponse = await self._unary("ReportServing", request)
        if response.HasField("report_interval"):
            self._report_interval = response.report_interval.ToTimedelta()
        return response.current_revision

    @property
    def report_interval(self) -> timedelta:
        """How often the broker wants reports, as its last ``ReportServing`` reply said."""
        return self._report_interval

    async def list_routers(self, *, page_size: int = 0) -> list[broker_pb2.RouterStatus]:
        """The routers that reported recently (sorted by id), with their lag and liveness.

        Follows every page (``page_size`` per reply, 0: the broker's default of 1000):
        each router appears once, its ``lag`` counted from the revision of its page.
        """
        routers: list[broker_pb2.RouterStatus] = []
        token = ""
        while True:
            request = broker_pb2.ListRoutersRequest(page_size=page_size, page_token=token)
            response: broker_pb2.ListRoutersResponse = await self._unary("ListRouters", request)
            routers.extend(response.routers)
            token = response.next_page_token
            if not token:
                return routers

    async def watch(
        self,
        after_revision: int = 0,
        *,
        include_keys: bool = False,
        include_challenges: bool = False,
        apps: Iterable[str] = (),
        domains: Iterable[str] = (),
        max_backoff: float = 3.0,
        idle_timeout: float | None = None,
        retry_unreached: bool = True,
        batch_snapshot: bool = True,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Follow every change after ``after_revision`` (0: snapshot first), forever.

        The stream is resumed from ``last_revision`` whenever it breaks
        (broker restart, lost connection, a "you are too slow, resume" status)
        with jittered backoff capped at ``max_backoff`` seconds, so the
        consumer sees each change once, in revision order. Two exceptions to
        "exactly once", both on purpose:

        - a snapshot (``after_revision == 0``) cut before
          ``EVENT_TYPE_SNAPSHOT_COMPLETE`` is started over, so its first
          events may be seen twice; applying a snapshot event is idempotent.
        - ``OUT_OF_RANGE``/``REVISION_COMPACTED`` (the broker no longer holds
          the events after our revision) starts a fresh snapshot; a consumer
          that keeps state should, on seeing ``EVENT_TYPE_SNAPSHOT`` after
          live events, rebuild it and drop at ``SNAPSHOT_COMPLETE`` whatever
          the new snapshot did not mention (``resnapshots`` counts these).

        Heartbeats are not yielded; they advance ``last_revision``, which
        relies on the broker sending a heartbeat only once the stream has
        delivered (or filtered out) everything up to its revision.

        ``idle_timeout`` (seconds; set it to a few heartbeat intervals) treats
        a stream that received nothing for that long as dead and reconnects:
        a broker host that vanished without closing TCP is noticed this way.
        Other errors raise ``BrokerError``.

        ``retry_unreached=False`` raises ``UNAVAILABLE`` when the very first
        stream fails before anything arrived, as a unary call would: a person
        running ``certbroker watch`` against a wrong address or with the wrong
        TLS settings wants the error, not a silent retry loop. Once the broker
        answered, breaks are resumed as usual.

        ``batch_snapshot`` asks the broker for the snapshot many events to a
        message (far less gRPC work for a large snapshot); the events yielded
        are the same, one by one, and a broker that sends them singly (one
        older than the option) is followed all the same.
        """
        self._last_revision = after_revision
        backoff = _Backoff(cap=max_backoff)
        request_apps = list(apps)
        request_domains = list(domains)
        reached = retry_unreached
        while True:
            snapshotting = self._last_revision == 0
            if snapshotting:
                self._snapshot_streams += 1
            request = broker_pb2.WatchStatusRequest(
                after_revision=self._last_revision,
                include_keys=include_keys,
                include_challenges=include_challenges,
                apps=request_apps,
                domains=request_domains,
                batch_snapshot=batch_snapshot,
            )
            call = self._stub.WatchStatus(request)
            delay_at_least = 0.0
            try:
                while True:
                    if idle_timeout is None:
                        response = await call.read()
                    else:
                        try:
                            response = await asyncio.wait_for(call.read(), idle_timeout)
                        except TimeoutError:
                            break  # silent for too long: reconnect
                    if response is _EOF:
                        break  # the broker closed the stream cleanly: resume
                    reached = True
                    backoff.reset()
                    kind = response.WhichOneof("kind")
                    if kind == "heartbeat":
                        if not snapshotting:
                            self._advance(response.heartbeat.revision)
                        continue
                    if kind == "event":
                        events: Iterable[WatchEvent] = (response.event,)
                    elif kind == "snapshot_batch":
                        events = response.snapshot_batch.events
                    else:
                        continue  # a kind newer than this client: skip it
                    for event in events:
                        if event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                            snapshotting = False
                            self._advance(event.revision)
                        elif not snapshotting:
                            self._advance(event.revision)
                        yield event
            except grpc.RpcError as err:
                error = BrokerError.from_rpc_error(err)
                if error.code == grpc.StatusCode.OUT_OF_RANGE and error.reason == (
                    REVISION_COMPACTED
                ):
                    self._last_revision = 0
                    self._resnapshots += 1
                    continue  # start over at once: waiting would not help
                if error.code not in _RESUMABLE or not reached:
                    raise error from None
                if error.retry_after is not None:
                    delay_at_least = error.retry_after.total_seconds()
            finally:
                call.cancel()
            await asyncio.sleep(backoff.next_delay(at_least=delay_at_least))

    def _advance(self, revision: int) -> None:
        # Never go backwards: a stale heartbeat must not cause a replay.
        self._last_revision = max(self._last_revision, revision)
