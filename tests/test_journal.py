"""The domain journal: each change logged once, with its fields, through a real broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from certbroker.clock import FakeClock
from certbroker.config import Settings
from certbroker.v1 import broker_pb2
from tests.broker import broker_settings, started_broker
from tests.integration.lab import wait_status
from tests.observe import captured_logs, json_lines
from tests.pki import NOW, TestPKI

PKI = TestPKI()
NAME = "journal.example.com"


def _journal(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == "certbroker.journal"]


async def test_every_change_is_logged_once_with_domain_app_states_and_reason(
    tmp_path: Path,
) -> None:
    trust = tmp_path / "trust.pem"
    trust.write_bytes(PKI.root.pem)
    clock = FakeClock(NOW)
    leaf = PKI.leaf(NAME)
    with captured_logs(Settings(log_format="json")) as buffer:
        async with started_broker(broker_settings(tmp_path, trust_bundle=str(trust)), clock) as b:
            stub = b.stub
            add = broker_pb2.IssueCertificateRequest(domain=NAME, app="shop")
            add.disable_letsencrypt = True
            await stub.IssueCertificate(add)
            add.disable_letsencrypt = False  # opt in: no CA configured, so it gets parked
            await stub.IssueCertificate(add)
            await wait_status(stub, NAME, lambda d: d.retry.last_error_reason == "NOT_CONFIGURED")
            await stub.UploadCustom(
                broker_pb2.UploadCustomRequest(
                    domain=NAME,
                    app="shop",
                    certificate=PKI.bundle(leaf),
                    private_key=leaf.key_pem(),
                )
            )
            await stub.RemoveDomain(broker_pb2.RemoveDomainRequest(domain=NAME, app="shop"))
    journal = _journal(json_lines(buffer))
    assert all(line["domain"] == NAME and line["app"] == "shop" for line in journal)
    moves = [(j["from_state"], j["to_state"], j["reason"]) for j in journal if "from_state" in j]
    assert moves == [
        ("DISABLED", "PENDING_DNS", "LETSENCRYPT_ENABLED"),
        ("PENDING_DNS", "NOT_USED", "CUSTOM_INSTALLED"),
    ]
    problems = [j for j in journal if j.get("reason") == "NOT_CONFIGURED"]
    assert len(problems) == 1
    assert problems[0]["level"] == "WARNING"
    assert "CERTBROKER_ACME_DIRECTORY is not set" in problems[0]["message"]
    messages = [j["message"] for j in journal]
    assert sum(m.startswith(f"domain {NAME} added") for m in messages) == 1
    assert sum(m.startswith(f"custom certificate installed for {NAME}") for m in messages) == 1
    assert sum(m.startswith(f"domain {NAME} removed") for m in messages) == 1
