"""The doctor's quota check: what the limits ledger would answer, read-only, in words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certbroker.doctor.checks import Subject, quota_headroom
from certbroker.doctor.report import Verdict
from certbroker.limits import Bucket, Limits, LimitsLedger, OrderRequest
from certbroker.model import Domain, LetsEncryptState, Source
from tests.fakes.records import MemoryLimitRecords

NOW = datetime(2026, 3, 1, tzinfo=UTC)
LIMITS = Limits(registered_domain=Bucket(10, timedelta(days=7)))


def subject(name: str) -> Subject:
    domain = Domain(
        name=name, app="shop", letsencrypt_enabled=True, le_state=LetsEncryptState.PENDING_DNS,
        serving=Source.NONE, created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    return Subject(domain, known=True, app="shop")


async def spend(records: MemoryLimitRecords, count: int) -> None:
    ledger = LimitsLedger(LIMITS)
    for i in range(count):
        order = OrderRequest(
            f"n{i}.example.com", "shop", "example.com", (f"n{i}.example.com",), False, None
        )
        assert await ledger.reserve(records, order, NOW) is None


async def test_room_in_every_bucket_is_ok_and_says_how_much() -> None:
    records = MemoryLimitRecords()
    await spend(records, 3)
    check = await quota_headroom(records, subject("a.example.com"), LIMITS, NOW)  # type: ignore[arg-type]
    assert check.verdict is Verdict.OK
    assert "new certificates for registered domain example.com: 7 of 10 left" in check.detail
    assert "new orders of the ACME account: 297 of 300 left" in check.detail


async def test_few_tokens_left_warn() -> None:
    records = MemoryLimitRecords()
    await spend(records, 9)
    check = await quota_headroom(records, subject("a.example.com"), LIMITS, NOW)  # type: ignore[arg-type]
    assert check.verdict is Verdict.WARN
    assert "1 of 10 left: new certificates for registered domain example.com" in check.summary


async def test_a_used_up_bucket_fails_with_when_the_broker_goes_on_by_itself() -> None:
    records = MemoryLimitRecords()
    await spend(records, 10)
    check = await quota_headroom(records, subject("a.example.com"), LIMITS, NOW)  # type: ignore[arg-type]
    assert check.verdict is Verdict.FAIL
    assert "registered domain example.com" in check.summary
    next_token = NOW + timedelta(days=7) / 10
    assert (
        check.fix
        == f"wait: the broker orders by itself at {next_token.isoformat(timespec='seconds')}"
    )
