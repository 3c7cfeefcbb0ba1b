"""A scripted in-process broker for client tests.

Why a fake next to the real server: the client's resume rules (which revision
after which failure) need failures on cue — a stream cut mid-snapshot, a
compaction, a "you are too slow" status — which a real broker produces only
by accident. Each WatchStatus call runs the next script; requests are kept so
tests assert what the client asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2

Script = Callable[[broker_pb2.WatchStatusRequest, grpc.aio.ServicerContext], AsyncIterator[Any]]


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    violations: Sequence[tuple[str, str]] = (),
    retry_after: timedelta | None = None,
) -> status_pb2.Status:
    """A google.rpc.Status as the broker's error mapper builds it."""
    details: list[any_pb2.Any] = []
    if reason:
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="certbroker"))
        details.append(packed)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(retry_after)
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def trailers(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return (("grpc-status-details-bin", status.SerializeToString()),)


async def abort(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> None:
    code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
    await context.abort(code, status.message, trailing_metadata=trailers(status))


def domain(name: str, revision: int, app: str = "app") -> domain_pb2.Domain:
    return domain_pb2.Domain(
        domain=name,
        app=app,
        revision=revision,
        disable_letsencrypt=True,
        lets_encrypt_state=domain_pb2.LETS_ENCRYPT_STATE_DISABLED,
        serving_source=domain_pb2.CERTIFICATE_SOURCE_NONE,
    )


def event(revision: int, kind: int, name: str = "") -> broker_pb2.WatchStatusResponse:
    return broker_pb2.WatchStatusResponse(
        event=broker_pb2.WatchEvent(
            revision=revision, type=kind, domain=domain(name, revision) if name else None
        )
    )


def batch(*responses: broker_pb2.WatchStatusResponse) -> broker_pb2.WatchStatusResponse:
    """The single-event ``responses`` as one ``snapshot_batch`` (``batch_snapshot`` streams)."""
    return broker_pb2.WatchStatusResponse(
        snapshot_batch=broker_pb2.WatchEventBatch(events=[r.event for r in responses])
    )


def heartbeat(revision: int) -> broker_pb2.WatchStatusResponse:
    return broker_pb2.WatchStatusResponse(heartbeat=broker_pb2.Heartbeat(revision=revision))


async def hang() -> None:
    """Keep a stream open until the client goes away."""
    await asyncio.Event().wait()


@dataclass
class FakeBroker(broker_pb2_grpc.CertificateBrokerServiceServicer):
    scripts: list[Script] = field(default_factory=list)
    watch_requests: list[broker_pb2.WatchStatusRequest] = field(default_factory=list)
    domains: dict[str, domain_pb2.Domain] = field(default_factory=dict)
    unary_error: status_pb2.Status | None = None
    issue_error: status_pb2.Status | None = None  # IssueCertificate only (e.g. RETRY_TOO_SOON)

    async def WatchStatus(
        self, request: broker_pb2.WatchStatusRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[broker_pb2.WatchStatusResponse]:
        self.watch_requests.append(request)
        if not self.scripts:
            await hang()
        script = self.scripts.pop(0)
        async for item in script(request, context):
            yield item

    async def GetStatus(
        self, request: broker_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.GetStatusResponse:
        if self.unary_error is not None:
            await abort(context, self.unary_error)
        if request.domain not in self.domains:
            await abort(
                context,
                rich_status(
                    grpc.StatusCode.NOT_FOUND,
                    f"domain {request.domain} is not known",
                    reason="DOMAIN_NOT_FOUND",
                ),
            )
        return broker_pb2.GetStatusResponse(domain=self.domains[request.domain])

    async def IssueCertificate(
        self, request: broker_pb2.IssueCertificateRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.IssueCertificateResponse:
        if self.issue_error is not None:
            await abort(context, self.issue_error)
        known = self.domains.setdefault(
            request.domain, domain(request.domain, len(self.domains) + 1, app=request.app)
        )
        return broker_pb2.IssueCertificateResponse(domain=known)

    async def ListDomains(
        self, request: broker_pb2.ListDomainsRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.ListDomainsResponse:
        names = sorted(
            n for n, d in self.domains.items() if not request.app or d.app == request.app
        )
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = names[start : start + size]
        more = start + size < len(names)
        return broker_pb2.ListDomainsResponse(
            domains=[self.domains[n] for n in page],
            next_page_token=str(start + size) if more else "",
        )


class FakeServer:
    """The fake on a loopback port that can be stopped and restarted on the same port."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server()
        broker_pb2_grpc.add_CertificateBrokerServiceServicer_to_server(self.broker, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self, grace: float | None = 0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"
