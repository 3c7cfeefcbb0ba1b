"""``CheckDomain`` / ``certbroker doctor`` against real DNS (challtestsrv), Pebble and a router.

The HTTP-01 self-probe goes the real way: the broker resolves the name
through challtestsrv, connects to the reference router's port 80 stand-in
(``doctor_http_port``), and the router forwards the challenge path to the
broker's own responder. Each test uses fresh names: the doctor runs once per
name per 10 s, and challtestsrv is shared by the session.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from certbroker.v1 import broker_pb2
from certbroker_client.client import BrokerError
from certbroker_client.reference_router import ReferenceRouter, RouterConfig
from certbroker_client.router import CertificateMap
from tests.broker import BrokerHandle, started_broker
from tests.infra.ports import free_port
from tests.integration.lab import Lab, in_use, unique_domain, wait_status

pytestmark = pytest.mark.integration

B = broker_pb2
OK, WARN, FAIL, SKIPPED = (
    B.CHECK_VERDICT_OK,
    B.CHECK_VERDICT_WARN,
    B.CHECK_VERDICT_FAIL,
    B.CHECK_VERDICT_SKIPPED,
)


@dataclass
class DoctorLab:
    broker: BrokerHandle
    router: ReferenceRouter


@pytest.fixture(scope="module")
async def doctor_lab(
    lab: Lab, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DoctorLab]:
    """A broker on Pebble and challtestsrv, probing through a router that forwards to it."""
    router = ReferenceRouter(
        CertificateMap(),
        RouterConfig(
            https_listen=("127.0.0.1", 0),
            http_listen=("127.0.0.1", 0),
            http01_forward=("127.0.0.1", lab.http01_port),
        ),
    )
    await router.start()
    try:
        settings = lab.settings(
            tmp_path_factory.mktemp("doctor"), doctor_http_port=router.http_port
        )
        async with started_broker(settings) as broker:
            yield DoctorLab(broker, router)
    finally:
        await router.stop()


def by_name(response: B.CheckDomainResponse) -> dict[str, B.DomainCheck]:
    return {check.name: check for check in response.checks}


def verdicts(response: B.CheckDomainResponse) -> dict[str, int]:
    return {check.name: check.verdict for check in response.checks}


async def check(handle: BrokerHandle, domain: str, app: str = "") -> B.CheckDomainResponse:
    return await handle.stub.CheckDomain(B.CheckDomainRequest(domain=domain, app=app))


async def cli(addr: str, *args: str) -> tuple[int, str, str]:
    """The CLI as a subprocess (the broker runs in this event loop, so never block it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "certbroker_client.cli", "--addr", addr, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_working_domain_is_all_ok_reads_only_and_is_rate_limited(
    doctor_lab: DoctorLab, lab: Lab
) -> None:
    broker = doctor_lab.broker
    name = unique_domain()
    await broker.stub.IssueCertificate(B.IssueCertificateRequest(domain=name, app="shop"))
    status = await wait_status(broker.stub, name, in_use)
    store = broker.running.store
    revision = await store.current_revision()
    issued = lab.pebble.issued_count()

    report = await check(broker, name, "shop")

    assert report.would_issue_now, report
    assert (report.domain, report.known, report.app) == (name, True, "shop")
    assert verdicts(report) == {
        "ownership": OK,
        "configuration": OK,
        "dns": OK,
        "caa": OK,
        "dns01_delegation": SKIPPED,
        "http01_probe": OK,
        "quota": OK,
        "schedule": OK,
    }
    checks = by_name(report)
    assert "answered: A 127.0.0.1" in checks["dns"].detail
    # Through the router's port (the broker's responder listens elsewhere), answered right.
    probe = checks["http01_probe"].detail
    port = doctor_lab.router.http_port
    assert f"from 127.0.0.1:{port}: 200 with the expected key authorization" in probe, probe
    # the issuance just made counts; renewing it needs no new-order or registered-domain token
    quota = checks["quota"].detail
    assert f"certificates for the names {name}: 4 of 5 left" in quota, quota
    assert "a renewal" in quota and "registered domain" not in quota
    assert report.next_action == "renew the Let's Encrypt certificate"
    assert report.next_action_time == status.next_check_time
    # Read-only: no revision, no order, no certificate, no token left behind.
    assert await store.current_revision() == revision
    assert await store.get_order(name) is None
    assert lab.pebble.issued_count() == issued
    assert len(broker.running.responder) == 0

    with pytest.raises(grpc.RpcError) as limited:
        await check(broker, name, "shop")
    error = BrokerError.from_rpc_error(limited.value)
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "DOCTOR_RATE_LIMITED"
    assert error.retry_after is not None
    assert timedelta(0) < error.retry_after <= timedelta(seconds=10)


async def test_bad_a_record_fails_with_answered_and_expected(
    doctor_lab: DoctorLab, lab: Lab
) -> None:
    name = unique_domain()
    lab.dns.add_a(name, ["127.0.0.2"])  # loopback, but not the platform: nothing listens there

    report = await check(doctor_lab.broker, name, "shop")

    assert not report.would_issue_now
    assert not report.known
    checks = by_name(report)
    dns = checks["dns"]
    assert dns.verdict == FAIL
    assert dns.summary == f"{name} has A 127.0.0.2, expected 127.0.0.1"
    assert dns.detail == "answered: A 127.0.0.2\nexpected: A 127.0.0.1"
    assert f"{name}. A 127.0.0.1" in dns.fix
    assert checks["http01_probe"].verdict == FAIL  # the CA would reach 127.0.0.2 too
    probe = checks["http01_probe"]
    assert "from 127.0.0.2:" in probe.detail
    assert probe.fix.startswith("fix the dns check first")
    assert checks["caa"].verdict == OK
    assert checks["schedule"].verdict == SKIPPED


async def test_forbidding_caa_names_the_deciding_record_and_the_one_to_add(
    doctor_lab: DoctorLab, lab: Lab
) -> None:
    name = unique_domain()
    parent = name.split(".", 1)[1]
    lab.dns.add_caa(parent, [("issue", "other.ca")])
    try:
        report = await check(doctor_lab.broker, name)
    finally:
        lab.dns.clear_caa(parent)

    assert not report.would_issue_now
    failed = [c.name for c in report.checks if c.verdict == FAIL]
    assert failed == ["caa"]  # DNS and the probe are fine: CAA alone stops it
    caa = by_name(report)["caa"]
    assert caa.summary == f"CAA at {parent} forbids letsencrypt.org from issuing for {name}"
    assert f'deciding record: {parent}. CAA 0 issue "other.ca"' in caa.detail
    assert caa.fix == f'{parent}. CAA 0 issue "letsencrypt.org"'


async def test_probe_fails_when_nothing_answers(lab: Lab, tmp_path: Path) -> None:
    settings = lab.settings(
        tmp_path,
        http01_listen=("127.0.0.1", 0),  # the module's broker holds the lab's responder port
        doctor_http_port=free_port(),  # nothing listens there
    )
    async with started_broker(settings) as broker:
        name = unique_domain()  # challtestsrv answers 127.0.0.1 by default
        report = await check(broker, name, "shop")
        assert len(broker.running.responder) == 0  # the probe's token was withdrawn

    assert not report.would_issue_now
    probe = by_name(report)["http01_probe"]
    assert probe.verdict == FAIL
    assert "connection refused" in probe.summary
    assert "forward /.well-known/acme-challenge/" in probe.fix
    assert [c.name for c in report.checks if c.verdict == FAIL] == ["http01_probe"]


async def test_another_apps_domain_is_reported_without_naming_the_owner(
    doctor_lab: DoctorLab,
) -> None:
    broker = doctor_lab.broker
    name = unique_domain()
    await broker.stub.IssueCertificate(
        B.IssueCertificateRequest(domain=name, app="alice", disable_letsencrypt=True)
    )
    report = await check(broker, name, "mallory")
    ownership = by_name(report)["ownership"]
    assert ownership.verdict == FAIL
    assert "another app" in ownership.summary
    assert "alice" not in str(report)
    assert report.app == "mallory"


async def test_bad_input_is_invalid_argument_on_the_field(doctor_lab: DoctorLab) -> None:
    for request, field in (
        (B.CheckDomainRequest(domain="not a name"), "domain"),
        (B.CheckDomainRequest(domain=unique_domain(), app="Not_An_App"), "app"),
    ):
        with pytest.raises(grpc.RpcError) as bad:
            await doctor_lab.broker.stub.CheckDomain(request)
        error = BrokerError.from_rpc_error(bad.value)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in error.violations] == [field]


async def test_cli_prints_a_report_and_exits_by_the_verdict(
    doctor_lab: DoctorLab, lab: Lab
) -> None:
    addr = doctor_lab.broker.address
    good = unique_domain()
    code, out, err = await cli(addr, "doctor", good, "--app", "shop")
    assert code == 0, (out, err)
    assert "OK    http01_probe" in out
    assert out.rstrip().endswith("Issuance would succeed now: every pre-flight check passes.")

    bad = unique_domain()
    lab.dns.add_a(bad, ["127.0.0.2"])
    code, out, err = await cli(addr, "doctor", bad)
    assert code == 1, (out, err)
    assert err == ""
    assert f"FAIL  dns               {bad} has A 127.0.0.2, expected 127.0.0.1" in out
    assert "fix: one of these records" in out
    assert "Issuance would NOT succeed now: fix dns, http01_probe" in out

    code, out, err = await cli(addr, "doctor", unique_domain(), "--json")
    assert code == 0, (out, err)
    parsed = json.loads(out)
    assert parsed["wouldIssueNow"] is True
    assert {c["name"] for c in parsed["checks"]} >= {"dns", "caa", "http01_probe", "quota"}

    code, out, err = await cli(addr, "doctor", good)  # the same name again, at once
    assert code == 1
    assert err.startswith("error: RESOURCE_EXHAUSTED (DOCTOR_RATE_LIMITED)"), err
