"""The broker on PostgreSQL through the real gRPC server, and a SQLite installation moved there.

- ``CERTBROKER_DB=postgresql://…``: Pebble issues, a custom certificate is
  uploaded, and a watcher sees both as events;
- two brokers on one database: names raced by two apps through the two brokers
  each end with one owner, the loser told so, and a watcher on one broker sees the
  other's writes (the deterministic form of the race, a transaction that begins
  while another is open, is in tests/store/test_postgres.py);
- ``certbroker migrate-db`` (run as a user would, a process) from a stopped SQLite
  broker: the broker started on the copy serves the same domains, certificates,
  revisions and event log, opens every key with the same KEK, and Pebble issues
  nothing more.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from certbroker import server
from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.infra.ports import free_port
from tests.integration.lab import BrokerProcess, Lab, in_use, unique_domain, wait_status
from tests.pki import Issued, TestPKI

PKI = TestPKI("Postgres")
DISABLED = domain_pb2.LETS_ENCRYPT_STATE_DISABLED
CUSTOM = domain_pb2.CERTIFICATE_SOURCE_CUSTOM


def trust(tmp: Path) -> str:
    path = tmp / "trust.pem"
    path.write_bytes(PKI.root.pem)
    return str(path)


def custom_leaf(name: str) -> Issued:
    now = datetime.now(UTC)
    return PKI.leaf(name, not_before=now - timedelta(days=1), not_after=now + timedelta(days=60))


class Watcher:
    """A WatchStatus stream read in the background: every event, in order."""

    def __init__(self, broker: BrokerHandle, after: int = 0) -> None:
        self.call = broker.stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=after))
        self.events: list[broker_pb2.WatchEvent] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            if response.HasField("event"):
                self.events.append(response.event)

    async def until(self, done: object, timeout: float = 30.0) -> None:
        """Wait until ``done(events)`` holds (a callable on the list so far)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done(self.events):  # type: ignore[operator]
            if self._task.done():
                self._task.result()
                raise AssertionError("the watch stream ended")
            if loop.time() > deadline:
                raise AssertionError(f"not seen in {timeout}s: {self.events[-3:]}")
            await asyncio.sleep(0.02)

    def updates(self) -> list[broker_pb2.WatchEvent]:
        return [e for e in self.events if e.revision and e.type != broker_pb2.EVENT_TYPE_SNAPSHOT]

    async def close(self) -> None:
        self.call.cancel()
        with suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self._task


@asynccontextmanager
async def watcher(broker: BrokerHandle, after: int = 0) -> AsyncIterator[Watcher]:
    w = Watcher(broker, after)
    try:
        yield w
    finally:
        await w.close()


def named(name: str, check: object) -> object:
    def done(events: list[broker_pb2.WatchEvent]) -> bool:
        return any(e.domain.domain == name and check(e.domain) for e in events)  # type: ignore[operator]

    return done


async def add_custom(broker: BrokerHandle, name: str, app: str = "shop") -> Issued:
    await broker.stub.IssueCertificate(
        broker_pb2.IssueCertificateRequest(domain=name, app=app, disable_letsencrypt=True)
    )
    leaf = custom_leaf(name)
    await broker.stub.UploadCustom(
        broker_pb2.UploadCustomRequest(
            domain=name, app=app, certificate=PKI.bundle(leaf), private_key=leaf.key_pem()
        )
    )
    return leaf


async def test_a_broker_on_postgresql_issues_uploads_and_a_watcher_sees_it(
    lab: Lab, tmp_path: Path, postgres_dsn: str
) -> None:
    settings = lab.settings(tmp_path, db=postgres_dsn, trust_bundle=trust(tmp_path))
    issued, uploaded = unique_domain(), unique_domain("custom")
    async with started_broker(settings) as broker, watcher(broker) as seen:
        await seen.until(
            lambda es: any(e.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE for e in es)
        )
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=issued, app="shop")
        )
        await add_custom(broker, uploaded)
        status = await wait_status(broker.stub, issued, in_use, timeout=60)
        await seen.until(named(issued, in_use))
        await seen.until(named(uploaded, lambda d: d.serving_source == CUSTOM))
        revisions = [e.revision for e in seen.updates()]
        assert revisions == list(range(revisions[0], revisions[0] + len(revisions)))  # no gap
        assert revisions[-1] == await broker.running.store.current_revision()
        served = await broker.running.broker.serving_material(await _record(broker, issued))
        assert served is not None and served.chain_pem == status.lets_encrypt_certificate.chain_pem


async def _record(broker: BrokerHandle, name: str) -> object:
    record = await broker.running.store.get_domain(name)
    assert record is not None
    return record


async def test_two_brokers_on_one_database_give_each_raced_name_one_owner(
    tmp_path: Path, postgres_dsn: str
) -> None:
    settings = broker_settings(tmp_path, db=postgres_dsn)  # the same KEK file for both
    names = [f"race{i}.example.com" for i in range(15)]
    async with (
        started_broker(settings) as one,
        started_broker(settings) as two,
        watcher(two) as on_two,
    ):
        await on_two.until(
            lambda es: any(e.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE for e in es)
        )

        async def claim(broker: BrokerHandle, name: str, app: str) -> str | None:
            try:
                await broker.stub.IssueCertificate(
                    broker_pb2.IssueCertificateRequest(
                        domain=name, app=app, disable_letsencrypt=True
                    )
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
                assert "belongs to another app" in (error.details() or "")
                return None
            return app

        results = await asyncio.gather(
            *(
                claim(broker, name, app)
                for name in names
                for broker, app in ((one, "app-a"), (two, "app-b"))
            )
        )
        for i, name in enumerate(names):
            winners = [r for r in results[2 * i : 2 * i + 2] if r is not None]
            assert len(winners) == 1, (name, results[2 * i : 2 * i + 2])
            for broker in (one, two):
                got = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
                assert got.domain.app == winners[0]
        # every write, whichever broker made it, reached the watcher on broker two
        await on_two.until(lambda es: {e.domain.domain for e in es} >= set(names))
        revisions = [e.revision for e in on_two.updates()]
        assert revisions == sorted(set(revisions))


async def test_a_sqlite_installation_moved_to_postgresql_serves_the_same(
    lab: Lab, tmp_path: Path, postgres_dsn: str
) -> None:
    sqlite_path = tmp_path / "broker.sqlite3"
    base = lab.settings(tmp_path, trust_bundle=trust(tmp_path))
    issued, uploaded, disabled, removed = (unique_domain(x) for x in ("le", "c", "off", "rm"))

    async with started_broker(base) as old:
        await old.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=issued, app="shop")
        )
        await wait_status(old.stub, issued, in_use, timeout=60)
        leaf = await add_custom(old, uploaded, app="blog")
        middle = await old.running.store.current_revision()
        await old.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(
                domain=disabled, app="shop", disable_letsencrypt=True
            )
        )
        await add_custom(old, removed)
        await old.stub.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=removed, app="shop"))
        head = await old.running.store.current_revision()
        before = await _state(old)
    # The log as a restarted broker replays it (a live one replays recent events from
    # memory, where a removed domain's certificate is still known).
    async with started_broker(base) as restarted, watcher(restarted, after=middle) as tail:
        await tail.until(lambda es: bool(es) and es[-1].revision == head)
        replay = list(tail.events)
    issued_count = lab.pebble.issued_count()

    migrate = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "certbroker_client.cli", "migrate-db",
         "--from", f"sqlite:{sqlite_path}", "--to", postgres_dsn],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    assert migrate.stdout.splitlines()[1].startswith(
        f"verified: every count matches; revision {head}"
    )

    async with started_broker(replace(base, db=postgres_dsn)) as new:
        assert await new.running.store.current_revision() == head
        assert await _state(new) == before
        async with watcher(new, after=middle) as tail:  # the log resumes from the same revision
            await tail.until(lambda es: bool(es) and es[-1].revision == head)
            assert tail.events == replay
        # every key opens with the same KEK and matches its certificate
        for name in (issued, uploaded):
            record = await new.running.store.get_domain(name)
            assert record is not None
            material = await new.running.broker.serving_material(record)
            assert material is not None
            cert = x509.load_pem_x509_certificates(material.chain_pem.encode())[0]
            key = load_pem_private_key(material.private_key_pem.encode(), None)
            assert key.public_key() == cert.public_key()
        uploaded_record = await new.running.store.get_domain(uploaded)
        assert uploaded_record is not None and uploaded_record.custom_cert is not None
        fingerprint = leaf.cert.fingerprint(hashes.SHA256()).hex()
        assert (
            uploaded_record.custom_cert.sha256_fingerprint.replace(":", "").lower() == fingerprint
        )
        # the next write continues the revisions
        await new.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=unique_domain("new"), app="shop",
                                               disable_letsencrypt=True)
        )  # fmt: skip
        assert await new.running.store.current_revision() == head + 1
    assert lab.pebble.issued_count() == issued_count  # nothing re-issued


async def _state(broker: BrokerHandle) -> list[domain_pb2.Domain]:
    """Every domain as the API shows it, in name order."""
    reply = await broker.stub.ListDomains(broker_pb2.ListDomainsRequest(page_size=1000))
    return sorted(reply.domains, key=lambda d: d.domain)


async def test_certbroker_serve_runs_on_postgresql_as_a_process(
    lab: Lab, tmp_path: Path, postgres_dsn: str
) -> None:
    port = free_port()
    process = BrokerProcess(lab.settings(tmp_path, db=postgres_dsn), port, tmp_path / "broker.log")
    await asyncio.to_thread(process.start)
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
        name = unique_domain("proc")
        added = await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop", disable_letsencrypt=True)
        )
        got = await stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
        assert got.domain == added.domain
        await channel.close()
    finally:
        code = await asyncio.to_thread(process.terminate)
    assert code == 0, process.log_path.read_text()
    assert "s3cret" not in process.log_path.read_text()


def test_an_unreachable_database_stops_serve_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        "CERTBROKER_LISTEN": "127.0.0.1:0",
        "CERTBROKER_DB": f"postgresql://cb:s3cret@127.0.0.1:{free_port()}/certbroker",
        "CERTBROKER_KEK_FILE": str(tmp_path / "kek"),
        "CERTBROKER_ACME_DIRECTORY": "off",
        "CERTBROKER_HTTP01_LISTEN": "off",
        "CERTBROKER_HEALTH_LISTEN": "off",
    }.items():
        monkeypatch.setenv(name, value)
    assert server.main() == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "certbroker: cannot start: CERTBROKER_DB=postgresql://cb:***@127.0.0.1:"
    ), err
    assert "cannot open the PostgreSQL database" in err
    assert "s3cret" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "kek").exists()  # nothing was created for a broker that never ran
