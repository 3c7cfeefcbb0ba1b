"""``certbroker doctor``'s text: one block per check, facts and fix indented, the answer last."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from certbroker.v1 import broker_pb2
from certbroker_client import render

B = broker_pb2


def at(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def report(*checks: B.DomainCheck, ok: bool) -> B.CheckDomainResponse:
    return B.CheckDomainResponse(
        domain="www.example.com",
        app="shop",
        known=True,
        checks=list(checks),
        would_issue_now=ok,
        next_action="check the DNS again, then order a certificate if it points at the platform",
        next_action_time=at(datetime(2026, 4, 1, 12, 1, tzinfo=UTC)),
        check_time=at(datetime(2026, 4, 1, 12, 0, tzinfo=UTC)),
    )


def test_failing_report_shows_facts_fix_and_what_to_fix() -> None:
    text = render.doctor_report(
        report(
            B.DomainCheck(name="ownership", verdict=B.CHECK_VERDICT_OK, summary="yours"),
            B.DomainCheck(
                name="dns",
                verdict=B.CHECK_VERDICT_FAIL,
                summary="www.example.com has A 192.0.2.1, expected 127.0.0.1",
                detail="answered: A 192.0.2.1\nexpected: A 127.0.0.1",
                fix="one of these records:\nwww.example.com. A 127.0.0.1",
            ),
            B.DomainCheck(
                name="dns01_delegation",
                verdict=B.CHECK_VERDICT_SKIPPED,
                summary="validated by HTTP-01",
                detail="never shown",
            ),
            ok=False,
        )
    )
    assert text.splitlines() == [
        "Checks for www.example.com (app shop), at 2026-04-01 12:00:00Z",
        "",
        "OK    ownership         yours",
        "FAIL  dns               www.example.com has A 192.0.2.1, expected 127.0.0.1",
        "                        answered: A 192.0.2.1",
        "                        expected: A 127.0.0.1",
        "                        fix: one of these records:",
        "                          www.example.com. A 127.0.0.1",
        "skip  dns01_delegation  validated by HTTP-01",
        "",
        "Next: check the DNS again, then order a certificate if it points at the platform"
        " (2026-04-01 12:01:00Z)",
        "Issuance would NOT succeed now: fix dns (see above).",
    ]


def test_passing_report_for_a_new_name() -> None:
    message = report(
        B.DomainCheck(name="caa", verdict=B.CHECK_VERDICT_WARN, summary="look"), ok=True
    )
    message.known = False
    message.ClearField("next_action_time")
    lines = render.doctor_report(message).splitlines()
    assert lines[0].endswith("(app shop), not added yet, at 2026-04-01 12:00:00Z")
    assert lines[2] == "WARN  caa  look"
    assert lines[-2].startswith("Next: check the DNS again") and "(" not in lines[-2]
    assert lines[-1] == "Issuance would succeed now: every pre-flight check passes."
