"""Renderings: the seed's words, readable tables, one-line errors, valid JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import timestamp_pb2

from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client import BrokerError, FieldViolation, render

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def cert(serial: str, days_left: int, issuer: str) -> domain_pb2.CertificateInfo:
    return domain_pb2.CertificateInfo(
        sans=["www.example.com"],
        subject="CN=www.example.com",
        issuer=issuer,
        serial=serial,
        not_before=ts(T0 - timedelta(days=10)),
        not_after=ts(T0 + timedelta(days=days_left)),
        sha256_fingerprint="ab" * 32,
        days_left=days_left,
        key_algorithm="ECDSA P-256",
    )


def stuck_domain() -> domain_pb2.Domain:
    return domain_pb2.Domain(
        domain="www.example.com",
        app="shop",
        lets_encrypt_state=domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS,
        serving_source=domain_pb2.CERTIFICATE_SOURCE_CUSTOM,
        custom_certificate=cert("0a1b", 40, "CN=Some CA"),
        retry=domain_pb2.RetryState(
            attempt=3,
            next_attempt_time=ts(T0 + timedelta(minutes=4)),
            last_error_reason="DNS_NOT_POINTING",
            last_error_message="www.example.com has A 192.0.2.1",
            last_error_time=ts(T0),
        ),
        dns=domain_pb2.DnsObservation(
            answered=["A 192.0.2.1"],
            expected=["A 203.0.113.5", "apps.example.net"],
            points_to_platform=False,
            check_time=ts(T0),
        ),
        revision=42,
        create_time=ts(T0 - timedelta(days=1)),
    )


def test_seed_words_for_every_state() -> None:
    words = {
        domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS: "Pending DNS",
        domain_pb2.LETS_ENCRYPT_STATE_CREATING: "Creating",
        domain_pb2.LETS_ENCRYPT_STATE_IN_USE: "In use",
        domain_pb2.LETS_ENCRYPT_STATE_NOT_USED: "Not used",
        domain_pb2.LETS_ENCRYPT_STATE_ACTION_REQUIRED: "Action required",
        domain_pb2.LETS_ENCRYPT_STATE_DISABLED: "Disabled",
    }
    for state, word in words.items():
        assert render.lets_encrypt_label(state) == word
    assert render.lets_encrypt_label(99) == "Unknown (99)"  # a state newer than the client


def test_table_shows_why_a_domain_is_stuck() -> None:
    ok = domain_pb2.Domain(
        domain="api.example.org",
        app="api",
        lets_encrypt_state=domain_pb2.LETS_ENCRYPT_STATE_IN_USE,
        serving_source=domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT,
        lets_encrypt_certificate=cert("01", 80, "CN=R11"),
    )
    lines = render.domains_table([stuck_domain(), ok], now=T0).splitlines()
    assert lines[0].split() == [
        "DOMAIN", "APP", "LET'S", "ENCRYPT", "SERVING", "EXPIRES", "ATTEMPT", "NEXT", "TRY",
        "LAST", "ERROR",
    ]  # fmt: skip
    assert "Pending DNS" in lines[1]
    assert "custom" in lines[1]
    assert "in 40 days" in lines[1]  # EXPIRES, relative to now
    assert "in 4 min" in lines[1]  # NEXT TRY
    assert "in 80 days" in lines[2]
    assert lines[1].rstrip().endswith("DNS_NOT_POINTING")
    assert "In use" in lines[2]
    assert "Let's Encrypt" in lines[2]
    # Columns line up: every row starts its second column at the same offset.
    offset = lines[0].index("APP")
    assert lines[1][offset:].startswith("shop")
    assert lines[2][offset:].startswith("api")


def test_empty_table() -> None:
    assert render.domains_table([]) == "no domains"


def test_status_block_has_dns_retry_and_both_certificates() -> None:
    text = render.status_block(stuck_domain(), now=T0 + timedelta(minutes=1))
    assert "Let's Encrypt:   Pending DNS (waiting for the domain's DNS" in text
    assert "does NOT point to us" in text
    assert "answered:     A 192.0.2.1" in text
    assert "expected:     A 203.0.113.5, apps.example.net" in text
    assert "attempt 3" in text
    assert "DNS_NOT_POINTING: www.example.com has A 192.0.2.1" in text
    assert "Let's Encrypt certificate: none" in text
    assert "Custom certificate:  (serving)" in text
    # Absolute and relative, both: "when exactly" and "how soon".
    assert "Valid until:  2026-07-11 12:00:00Z (expires in 39 days)" in text
    assert "next try:     2026-06-01 12:04:00Z (in 3 min)" in text
    assert "Created:         2026-05-31 12:00:00Z (24 h ago)" in text
    assert "DNS:             does NOT point to us (checked 60 s ago)" in text
    assert "Revision:        42" in text


def test_status_block_action_required_and_disabled() -> None:
    d = domain_pb2.Domain(
        domain="*.example.com",
        app="shop",
        lets_encrypt_state=domain_pb2.LETS_ENCRYPT_STATE_ACTION_REQUIRED,
        action_required="_acme-challenge.example.com. CNAME x.acme.example.net.",
    )
    text = render.status_block(d)
    assert "Action required: _acme-challenge.example.com. CNAME x.acme.example.net." in text
    disabled = domain_pb2.Domain(
        domain="a.example.com", lets_encrypt_state=domain_pb2.LETS_ENCRYPT_STATE_DISABLED
    )
    text = render.status_block(disabled)
    assert "Disabled (opted out (--no-letsencrypt)" in text
    assert "DNS:             not checked" in text
    assert "Retry:           no failures" in text


def test_watch_line() -> None:
    ev = broker_pb2.WatchEvent(
        revision=7, type=broker_pb2.EVENT_TYPE_DOMAIN_UPDATED, domain=stuck_domain()
    )
    assert render.watch_line(ev) == (
        "rev=7 UPDATED www.example.com app=shop letsencrypt=Pending_DNS serving=custom"
        " error=DNS_NOT_POINTING"
    )
    done = broker_pb2.WatchEvent(revision=9, type=broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE)
    assert render.watch_line(done) == "rev=9 SNAPSHOT_COMPLETE"


def test_json_is_the_proto_json() -> None:
    data = json.loads(render.to_json(stuck_domain()))
    assert data["letsEncryptState"] == "LETS_ENCRYPT_STATE_PENDING_DNS"
    assert data["retry"]["attempt"] == 3
    ev = broker_pb2.WatchEvent(revision=7, type=broker_pb2.EVENT_TYPE_DOMAIN_UPDATED)
    line = render.to_json(ev, one_line=True)
    assert "\n" not in line
    assert json.loads(line) == {"revision": "7", "type": "EVENT_TYPE_DOMAIN_UPDATED"}


def test_error_lines() -> None:
    err = BrokerError(
        grpc.StatusCode.NOT_FOUND,
        "domain www.example.com is not known",
        reason="DOMAIN_NOT_FOUND",
    )
    assert render.error_lines(err) == [
        "error: NOT_FOUND (DOMAIN_NOT_FOUND): domain www.example.com is not known"
    ]


def test_error_said_once_violations_only_when_they_add_something() -> None:
    # The broker's message joins its violations: printing them again said everything twice.
    bad = BrokerError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "domain: empty label; app: too long",
        reason="INVALID_DOMAIN",
        violations=[FieldViolation("domain", "empty label"), FieldViolation("app", "too long")],
    )
    assert render.error_lines(bad) == [
        "error: INVALID_ARGUMENT (INVALID_DOMAIN): domain: empty label; app: too long"
    ]
    terse = BrokerError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad request",
        reason="INVALID_ARGUMENT",  # only repeats the code: left out
        violations=[FieldViolation("domain", "empty\nlabel")],
    )
    assert render.error_lines(terse) == [
        "error: INVALID_ARGUMENT: bad request",
        "  domain: empty label",
    ]


def test_retry_info_says_when_to_try_again_rounded_up() -> None:
    err = BrokerError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "retried on request recently",
        reason="RETRY_TOO_SOON",
        retry_after=timedelta(seconds=541),
    )
    assert render.error_lines(err) == [
        "error: RESOURCE_EXHAUSTED (RETRY_TOO_SOON): retried on request recently",
        "  try again in 10 min",
    ]


def test_relative_times() -> None:
    assert render.relative(T0 + timedelta(minutes=3, seconds=59), T0) == "in 3 min"
    assert render.relative(T0 - timedelta(hours=2, minutes=10), T0) == "2 h ago"
    assert render.relative(T0 + timedelta(days=59, hours=23), T0) == "in 59 days"
    assert render.relative(T0 + timedelta(seconds=42), T0) == "in 42 s"
    assert render.relative(T0 + timedelta(milliseconds=400), T0) == "now"
    assert render.relative(T0 - timedelta(seconds=100), T0) == "1 min ago"
    assert render.relative(T0 + timedelta(hours=47), T0) == "in 47 h"
    assert render.relative(T0 + timedelta(hours=48), T0) == "in 2 days"


def test_durations_round_down_except_waits() -> None:
    assert render.duration(timedelta(seconds=541)) == "9 min"
    assert render.duration(timedelta(seconds=541), round_up=True) == "10 min"
    assert render.duration(timedelta(seconds=0.2), round_up=True) == "1 s"
    assert render.duration(timedelta(days=-3, hours=-5)) == "3 days"


def test_table_expired_certificate_and_due_retry() -> None:
    d = domain_pb2.Domain(
        domain="old.example.com",
        app="shop",
        lets_encrypt_state=domain_pb2.LETS_ENCRYPT_STATE_CREATING,
        serving_source=domain_pb2.CERTIFICATE_SOURCE_CUSTOM,
        custom_certificate=cert("02", -3, "CN=Some CA"),
        retry=domain_pb2.RetryState(
            attempt=1, next_attempt_time=ts(T0 - timedelta(seconds=5)), last_error_reason="X"
        ),
    )
    row = render.domains_table([d], now=T0).splitlines()[1]
    assert "expired 3 days ago" in row
    assert " now " in row  # a next try already past is due, not "5 s ago"


def test_unreachable_broker_names_the_address_on_one_line() -> None:
    err = BrokerError(grpc.StatusCode.UNAVAILABLE, "failed to connect\n  to all addresses")
    assert render.error_lines(err, addr="127.0.0.1:1") == [
        "error: UNAVAILABLE: cannot reach the broker at 127.0.0.1:1: "
        "failed to connect to all addresses"
    ]


def test_routers_table_shows_lag_and_stale_routers() -> None:
    routers = [
        broker_pb2.RouterStatus(
            router_id="edge-1", identity="router-1", applied_revision=42, lag=0, domain_count=9,
            last_seen_time=ts(T0), live=True,
        ),
        broker_pb2.RouterStatus(
            router_id="edge-2", identity="router-1", applied_revision=40, lag=2, domain_count=9,
            last_seen_time=ts(T0 - timedelta(minutes=1)), live=False,
        ),
    ]  # fmt: skip
    lines = render.routers_table(routers, now=T0 + timedelta(seconds=5)).splitlines()
    assert lines[0].split() == [
        "ROUTER",
        "IDENTITY",
        "APPLIED",
        "LAG",
        "DOMAINS",
        "LAST",
        "SEEN",
        "STATE",
    ]
    assert lines[1].split() == [
        "edge-1",
        "router-1",
        "42",
        "0",
        "9",
        "5",
        "s",
        "ago",
        "live",
    ]
    assert lines[2].split() == [
        "edge-2",
        "router-1",
        "40",
        "2",
        "9",
        "65",
        "s",
        "ago",
        "stale",
    ]
    assert render.routers_table([]) == "no routers reporting"


def test_status_block_says_how_many_routers_serve_the_revision() -> None:
    d = stuck_domain()
    assert "Routers:         none reporting" in render.status_block(d)
    d.serving_routers, d.known_routers = 2, 3
    assert "Routers:         2 of 3 serve this revision" in render.status_block(d)
