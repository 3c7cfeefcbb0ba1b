"""Server reflection v1 (beside v1alpha) and error details a reflection-only client can decode.

``buf curl`` is the client that prefers v1; a raw client (generated v1alpha
messages, which are wire-identical, sent to the v1 method) plays grpcurl:
it decodes the broker's ``google.rpc`` error details with nothing but the
descriptors reflection returns.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from certbroker.v1 import broker_pb2
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.infra.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
SERVICES = {
    "certbroker.v1.CertificateBrokerService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrokerHandle]:
    # DNS to a closed port: CheckDomain (used for a RetryInfo) fails its lookups at once.
    settings = broker_settings(
        tmp_path_factory.mktemp("reflection"), dns_servers=(("127.0.0.1", free_port()),)
    )
    async with started_broker(settings) as handle:
        yield handle


async def reflect(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest, path: str = V1
) -> reflection_pb2.ServerReflectionResponse:
    call = channel.stream_stream(
        path,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    async for response in call(iter([request]), timeout=10):
        return response  # type: ignore[no-any-return]
    raise AssertionError("no reflection response")


async def files_for(
    channel: grpc.aio.Channel, symbol: str
) -> list[descriptor_pb2.FileDescriptorProto]:
    response = await reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    )
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    files = []
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
        files.append(proto)
    return files


async def decode_details(channel: grpc.aio.Channel, error: grpc.RpcError) -> dict[str, dict]:  # type: ignore[type-arg]
    """Every ``Any`` detail of ``error``, decoded with descriptors from reflection only."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    pool = descriptor_pool.DescriptorPool()  # empty: nothing compiled in
    decoded = {}
    for detail in status.details:
        name = detail.type_url.rsplit("/", 1)[1]
        pending = await files_for(channel, name)
        while pending:  # add each file after its dependencies
            for proto in list(pending):
                try:
                    pool.Add(proto)
                except TypeError:
                    continue
                pending.remove(proto)
        cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        message = cls()
        message.ParseFromString(detail.value)
        decoded[name] = json_format.MessageToDict(message)
    return decoded


async def test_v1_lists_services_and_v1alpha_still_answers(broker: BrokerHandle) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for path in (V1, V1ALPHA):
        response = await reflect(broker.channel, request, path)
        assert {s.name for s in response.list_services_response.service} == SERVICES


async def test_v1_describes_itself_and_the_error_detail_types(broker: BrokerHandle) -> None:
    own = await files_for(broker.channel, "grpc.reflection.v1.ServerReflection")
    assert own[0].name == "grpc/reflection/v1/reflection.proto"
    assert own[0].package == "grpc.reflection.v1"
    for symbol in ("google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.rpc.RetryInfo"):
        names = [f.name for f in await files_for(broker.channel, symbol)]
        assert names[0] == "google/rpc/error_details.proto", (symbol, names)


async def test_error_details_decode_from_reflection_alone(broker: BrokerHandle) -> None:
    stub = broker.stub
    with pytest.raises(grpc.RpcError) as bad:
        await stub.GetStatus(broker_pb2.GetStatusRequest(domain="not a name"))
    decoded = await decode_details(broker.channel, bad.value)
    assert decoded["google.rpc.ErrorInfo"]["reason"] == "DOMAIN_INVALID"
    [violation] = decoded["google.rpc.BadRequest"]["fieldViolations"]
    assert violation["field"] == "domain"

    request = broker_pb2.CheckDomainRequest(domain="reflection.example.test")
    await stub.CheckDomain(request)
    with pytest.raises(grpc.RpcError) as limited:
        await stub.CheckDomain(request)
    decoded = await decode_details(broker.channel, limited.value)
    assert decoded["google.rpc.ErrorInfo"]["reason"] == "DOCTOR_RATE_LIMITED"
    assert decoded["google.rpc.RetryInfo"]["retryDelay"].endswith("s")


async def buf_curl(*args: str) -> tuple[int, str, str]:
    if not BUF.exists() and shutil.which("buf") is None:
        pytest.skip("buf is not installed (make test runs npm ci)")
    binary = str(BUF) if BUF.exists() else "buf"
    proc = await asyncio.create_subprocess_exec(
        binary, "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_buf_curl_lists_services_over_v1(broker: BrokerHandle) -> None:
    code, out, err = await buf_curl("-v", "--list-services", f"http://{broker.address}")
    assert code == 0, err
    assert set(out.split()) == SERVICES
    assert f"POST {V1}" in err  # v1 answered: no fallback to v1alpha
    assert "v1alpha.ServerReflection/ServerReflectionInfo" not in err


async def test_buf_curl_calls_check_domain_described_by_reflection(broker: BrokerHandle) -> None:
    url = f"http://{broker.address}/certbroker.v1.CertificateBrokerService/CheckDomain"
    code, out, err = await buf_curl("-d", '{"domain": "buf.example.test"}', url)
    assert code == 0, err
    assert '"name": "http01_probe"' in out
    code, out, err = await buf_curl("-d", '{"domain": "not a name"}', url)
    assert code != 0
    assert '"code": "invalid_argument"' in err
    assert '"type": "google.rpc.BadRequest"' in err
