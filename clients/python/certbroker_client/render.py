"""Text and JSON renderings of broker messages for people and scripts.

Pure functions from proto messages to strings: no I/O, and the current time
is a parameter (``now``, the caller's clock when left out), so the CLI's output
is tested with plain values. Tables say times relative to ``now`` ("next try
in 3 min", "expires in 59 days", "2 h ago"): a person scanning a table wants
"how soon", not a timestamp to subtract in their head. ``status`` shows both;
``--json`` keeps the proto's absolute times for scripts. The words are the
seed's dashboard words, so a person reading the CLI sees the same statuses the
documentation explains.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client.client import BrokerError, TlsFiles
from certbroker_client.hints import connection_hint

__all__ = [
    "app_label",
    "doctor_report",
    "domains_table",
    "duration",
    "error_lines",
    "lets_encrypt_label",
    "relative",
    "routers_table",
    "source_label",
    "status_block",
    "to_json",
    "watch_line",
]

_LE_LABELS: dict[int, str] = {
    domain_pb2.LETS_ENCRYPT_STATE_UNSPECIFIED: "Unknown",
    domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS: "Pending DNS",
    domain_pb2.LETS_ENCRYPT_STATE_CREATING: "Creating",
    domain_pb2.LETS_ENCRYPT_STATE_IN_USE: "In use",
    domain_pb2.LETS_ENCRYPT_STATE_NOT_USED: "Not used",
    domain_pb2.LETS_ENCRYPT_STATE_ACTION_REQUIRED: "Action required",
    domain_pb2.LETS_ENCRYPT_STATE_DISABLED: "Disabled",
}

# One sentence per state, after the seed's list of statuses, so `status`
# explains what the state means without sending the reader to the docs.
_LE_EXPLANATIONS: dict[int, str] = {
    domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS: (
        "waiting for the domain's DNS to target the platform; checked every 60 seconds"
    ),
    domain_pb2.LETS_ENCRYPT_STATE_CREATING: "exchanging messages with Let's Encrypt",
    domain_pb2.LETS_ENCRYPT_STATE_IN_USE: "a Let's Encrypt certificate serves the domain",
    domain_pb2.LETS_ENCRYPT_STATE_NOT_USED: (
        "a custom certificate serves; Let's Encrypt takes over if it expires or is removed"
    ),
    domain_pb2.LETS_ENCRYPT_STATE_ACTION_REQUIRED: "the customer must do something (see below)",
    domain_pb2.LETS_ENCRYPT_STATE_DISABLED: (
        "opted out (--no-letsencrypt): Let's Encrypt is never contacted"
    ),
}

_SOURCE_LABELS: dict[int, str] = {
    domain_pb2.CERTIFICATE_SOURCE_UNSPECIFIED: "-",
    domain_pb2.CERTIFICATE_SOURCE_NONE: "none",
    domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT: "Let's Encrypt",
    domain_pb2.CERTIFICATE_SOURCE_CUSTOM: "custom",
}

_KEY_LABELS: dict[int, str] = {
    domain_pb2.KEY_ALGORITHM_UNSPECIFIED: "default",
    domain_pb2.KEY_ALGORITHM_ECDSA_P256: "ECDSA P-256",
    domain_pb2.KEY_ALGORITHM_RSA_2048: "RSA 2048",
}

_CHALLENGE_LABELS: dict[int, str] = {
    domain_pb2.CHALLENGE_TYPE_UNSPECIFIED: "default",
    domain_pb2.CHALLENGE_TYPE_HTTP_01: "HTTP-01",
    domain_pb2.CHALLENGE_TYPE_DNS_01: "DNS-01",
}

_EVENT_LABELS: dict[int, str] = {
    broker_pb2.EVENT_TYPE_UNSPECIFIED: "UNSPECIFIED",
    broker_pb2.EVENT_TYPE_SNAPSHOT: "SNAPSHOT",
    broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE: "SNAPSHOT_COMPLETE",
    broker_pb2.EVENT_TYPE_DOMAIN_UPDATED: "UPDATED",
    broker_pb2.EVENT_TYPE_DOMAIN_REMOVED: "REMOVED",
    broker_pb2.EVENT_TYPE_CHALLENGE_ADDED: "CHALLENGE_ADDED",
    broker_pb2.EVENT_TYPE_CHALLENGE_REMOVED: "CHALLENGE_REMOVED",
}


def lets_encrypt_label(state: int) -> str:
    """The seed's word for a Let's Encrypt state ("Pending DNS", "In use", ...)."""
    return _LE_LABELS.get(state, f"Unknown ({state})")


def source_label(source: int) -> str:
    """Which certificate serves, in words."""
    return _SOURCE_LABELS.get(source, f"unknown ({source})")


def app_label(d: domain_pb2.Domain) -> str:
    """The owner as tables show it: the platform's own domains belong to no app."""
    return "(platform)" if d.platform else d.app


_PLATFORM_OWNER = (
    "(platform) the broker's own CERTBROKER_PLATFORM_DOMAINS: no app owns it; "
    "changed by configuration only"
)


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def when(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """The time a Timestamp holds, or None when unset (the zero Timestamp is never a real time)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def format_time(ts: timestamp_pb2.Timestamp) -> str:
    """UTC to the second, or "-" when unset."""
    at = when(ts)
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M:%SZ")


def duration(span: timedelta, *, round_up: bool = False) -> str:
    """A length of time in the unit that keeps it readable: "42 s", "3 min", "2 h", "59 days".

    Rounded down ("expires in 59 days" on day 59.9 matches the broker's
    ``days_left``), or up with ``round_up`` for waits ("try again in 10 min"
    must never send someone back a minute early).
    """
    seconds = abs(span.total_seconds())
    units = ((172_800, 86_400, "days"), (5_400, 3_600, "h"), (90, 60, "min"), (0, 1, "s"))
    for threshold, size, name in units:
        if seconds >= threshold:
            count = math.ceil(seconds / size) if round_up else math.floor(seconds / size)
            return f"{max(count, 1) if round_up else count} {name}"
    raise AssertionError("unreachable: the last unit has threshold 0")


def relative(at: datetime, now: datetime) -> str:
    """``at`` seen from ``now``: "in 3 min", "2 h ago", or "now" within a second."""
    span = at - now
    if abs(span) < timedelta(seconds=1):
        return "now"
    return f"in {duration(span)}" if span > timedelta(0) else f"{duration(span)} ago"


def _relative_ts(ts: timestamp_pb2.Timestamp, now: datetime) -> str:
    at = when(ts)
    return "-" if at is None else relative(at, now)


def _with_relative(ts: timestamp_pb2.Timestamp, now: datetime) -> str:
    """Absolute and relative: "2026-06-01 12:04:00Z (in 4 min)"."""
    at = when(ts)
    return "-" if at is None else f"{format_time(ts)} ({relative(at, now)})"


def _expiry(domain: domain_pb2.Domain, now: datetime) -> str:
    """Expiry of the certificate that serves now, relative to ``now``."""
    if domain.serving_source == domain_pb2.CERTIFICATE_SOURCE_CUSTOM:
        cert = domain.custom_certificate
    elif domain.serving_source == domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT:
        cert = domain.lets_encrypt_certificate
    else:
        return "-"
    return _cert_expiry(cert, now)


def _cert_expiry(cert: domain_pb2.CertificateInfo, now: datetime) -> str:
    at = when(cert.not_after)
    if at is None:
        return "-"
    return f"expired {duration(at - now)} ago" if at <= now else f"in {duration(at - now)}"


def _next_try(ts: timestamp_pb2.Timestamp, now: datetime) -> str:
    """When the broker tries again; a time already past means it is due ("now")."""
    at = when(ts)
    if at is None:
        return "-"
    return "now" if at <= now else relative(at, now)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


_TABLE_HEADER = (
    "DOMAIN",
    "APP",
    "LET'S ENCRYPT",
    "SERVING",
    "EXPIRES",
    "ATTEMPT",
    "NEXT TRY",
    "LAST ERROR",
)


def domains_table(domains: Iterable[domain_pb2.Domain], *, now: datetime | None = None) -> str:
    """One row per domain: what a person scans for ("which ones are stuck, and why")."""
    at = _now(now)
    rows: list[list[str]] = []
    for d in domains:
        retry = d.retry
        failing = retry.attempt > 0
        waiting = failing or bool(retry.last_error_reason)  # e.g. DNS not pointing yet
        rows.append(
            [
                d.domain,
                app_label(d),
                lets_encrypt_label(d.lets_encrypt_state),
                source_label(d.serving_source),
                _expiry(d, at),
                str(retry.attempt) if failing else "-",
                _next_try(retry.next_attempt_time, at) if waiting else "-",
                retry.last_error_reason or "-",
            ]
        )
    if not rows:
        return "no domains"
    return _table(_TABLE_HEADER, rows)


def _certificate_lines(
    title: str, cert: domain_pb2.CertificateInfo, serving: bool, now: datetime
) -> list[str]:
    if not cert.sha256_fingerprint and not cert.serial:
        return [f"{title}: none"]
    lines = [f"{title}:" + ("  (serving)" if serving else "")]
    expiry = format_time(cert.not_after)
    if expiry != "-":
        expiry += f" (expires {_cert_expiry(cert, now)})"
    facts = [
        ("Names", ", ".join(cert.sans) or "-"),
        ("Subject", cert.subject or "-"),
        ("Issuer", cert.issuer or "-"),
        ("Serial", cert.serial or "-"),
        ("Valid from", _with_relative(cert.not_before, now)),
        ("Valid until", expiry),
        ("Key", cert.key_algorithm or "-"),
        ("SHA-256", cert.sha256_fingerprint or "-"),
    ]
    lines.extend(f"  {name + ':':<14}{value}" for name, value in facts)
    return lines


def status_block(d: domain_pb2.Domain, *, now: datetime | None = None) -> str:
    """Everything a person needs to see why a domain is where it is, without logs."""
    at = _now(now)
    state = lets_encrypt_label(d.lets_encrypt_state)
    explanation = _LE_EXPLANATIONS.get(d.lets_encrypt_state)
    facts: list[tuple[str, str]] = [
        ("Domain", d.domain),
        ("App", _PLATFORM_OWNER if d.platform else d.app),
        ("Let's Encrypt", f"{state} ({explanation})" if explanation else state),
        ("Serving", source_label(d.serving_source)),
        ("Key algorithm", _KEY_LABELS.get(d.key_algorithm, str(d.key_algorithm))),
        ("Challenge", _CHALLENGE_LABELS.get(d.challenge_type, str(d.challenge_type))),
        ("Revision", str(d.revision)),
        ("Routers", _routers_line(d)),
        ("Created", _with_relative(d.create_time, at)),
        ("Updated", _with_relative(d.update_time, at)),
        ("Next check", _with_relative(d.next_check_time, at)),
        ("Renewal due", _with_relative(d.renewal_time, at)),
    ]
    lines = [f"{name + ':':<17}{value}" for name, value in facts]

    if d.action_required:
        lines.append(f"{'Action required:':<17}{d.action_required}")

    dns = d.dns
    if dns.answered or dns.expected or dns.check_time.seconds:
        verdict = "points to the platform" if dns.points_to_platform else "does NOT point to us"
        lines.append(f"{'DNS:':<17}{verdict} (checked {_relative_ts(dns.check_time, at)})")
        lines.append(f"  {'answered:':<14}{', '.join(dns.answered) or '(nothing)'}")
        lines.append(f"  {'expected:':<14}{', '.join(dns.expected) or '-'}")
    else:
        lines.append(f"{'DNS:':<17}not checked")

    retry = d.retry
    if retry.attempt > 0 or retry.last_error_reason:
        lines.append(f"{'Retry:':<17}attempt {retry.attempt}")
        lines.append(f"  {'next try:':<14}{_with_relative(retry.next_attempt_time, at)}")
        if retry.last_error_reason or retry.last_error_message:
            lines.append(
                f"  {'last error:':<14}{retry.last_error_reason or '-'}"
                + (f": {retry.last_error_message}" if retry.last_error_message else "")
            )
            lines.append(f"  {'at:':<14}{_with_relative(retry.last_error_time, at)}")
    else:
        lines.append(f"{'Retry:':<17}no failures")

    if d.custom_certificate_expiring:
        lines.append("Warning:         the custom certificate expires within 14 days")

    lines.extend(
        _certificate_lines(
            "Let's Encrypt certificate",
            d.lets_encrypt_certificate,
            d.serving_source == domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT,
            at,
        )
    )
    lines.extend(
        _certificate_lines(
            "Custom certificate",
            d.custom_certificate,
            d.serving_source == domain_pb2.CERTIFICATE_SOURCE_CUSTOM,
            at,
        )
    )
    return "\n".join(lines)


def _routers_line(d: domain_pb2.Domain) -> str:
    if d.known_routers == 0:
        return "none reporting"
    return f"{d.serving_routers} of {d.known_routers} serve this revision"


_ROUTERS_HEADER = ("ROUTER", "IDENTITY", "APPLIED", "LAG", "DOMAINS", "LAST SEEN", "STATE")


def routers_table(
    routers: Iterable[broker_pb2.RouterStatus], *, now: datetime | None = None
) -> str:
    """One row per router: which one is behind ("LAG"), or silent ("stale")."""
    at = _now(now)
    rows = [
        [
            r.router_id,
            r.identity or "-",
            str(r.applied_revision),
            str(r.lag),
            str(r.domain_count),
            _relative_ts(r.last_seen_time, at),
            "live" if r.live else "stale",
        ]
        for r in routers
    ]
    if not rows:
        return "no routers reporting"
    return _table(_ROUTERS_HEADER, rows)


_VERDICT_LABELS: dict[int, str] = {
    broker_pb2.CHECK_VERDICT_OK: "OK",
    broker_pb2.CHECK_VERDICT_WARN: "WARN",
    broker_pb2.CHECK_VERDICT_FAIL: "FAIL",
    broker_pb2.CHECK_VERDICT_SKIPPED: "skip",
}


def doctor_report(report: broker_pb2.CheckDomainResponse) -> str:
    """``certbroker doctor``: one block per check (verdict, sentence, facts, fix), then the
    next scheduled action and the overall answer, in the spirit of ``fly certs check``."""
    owner = f" (app {report.app})" if report.app else ""
    added = "" if report.known else ", not added yet"
    lines = [f"Checks for {report.domain}{owner}{added}, at {format_time(report.check_time)}", ""]
    width = max((len(c.name) for c in report.checks), default=0)
    indent = " " * (6 + width + 2)
    for check in report.checks:
        label = _VERDICT_LABELS.get(check.verdict, "?")
        lines.append(f"{label:<5} {check.name:<{width}}  {_one_line(check.summary)}")
        if check.verdict == broker_pb2.CHECK_VERDICT_SKIPPED:
            continue
        lines.extend(f"{indent}{line}" for line in check.detail.splitlines() if line.strip())
        fix = check.fix.splitlines()
        if fix:
            lines.append(f"{indent}fix: {fix[0]}")
            lines.extend(f"{indent}  {line}" for line in fix[1:] if line.strip())
    lines.append("")
    when = ""
    if report.HasField("next_action_time"):
        when = f" ({format_time(report.next_action_time)})"
    lines.append(f"Next: {report.next_action}{when}")
    failed = [c.name for c in report.checks if c.verdict == broker_pb2.CHECK_VERDICT_FAIL]
    if report.would_issue_now:
        lines.append("Issuance would succeed now: every pre-flight check passes.")
    else:
        lines.append(f"Issuance would NOT succeed now: fix {', '.join(failed)} (see above).")
    return "\n".join(lines)


def watch_line(event: broker_pb2.WatchEvent) -> str:
    """One line per event, greppable: revision, type, domain, then its state."""
    kind = _EVENT_LABELS.get(event.type, str(event.type))
    if event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
        return f"rev={event.revision} {kind}"
    d = event.domain
    parts = [f"rev={event.revision}", kind, d.domain or "-"]
    if event.type in (
        broker_pb2.EVENT_TYPE_CHALLENGE_ADDED,
        broker_pb2.EVENT_TYPE_CHALLENGE_REMOVED,
    ):
        parts.append(f"token={event.challenge.token}")
        return " ".join(parts)
    parts += [
        f"app={d.app or '-'}",
        f"letsencrypt={lets_encrypt_label(d.lets_encrypt_state).replace(' ', '_')}",
        f"serving={source_label(d.serving_source).replace(' ', '_')}",
    ]
    if d.retry.last_error_reason:
        parts.append(f"error={d.retry.last_error_reason}")
    return " ".join(parts)


def to_json(message: Message, *, one_line: bool = False) -> str:
    """The proto's canonical JSON (what grpcurl shows), indented or on one line."""
    return json_format.MessageToJson(message, indent=None if one_line else 2)


def _one_line(text: str) -> str:
    # gRPC details may hold newlines (e.g. connection failures): keep one line.
    return " ".join(text.split())


def error_lines(
    err: BrokerError, *, addr: str | None = None, tls: TlsFiles | None = None
) -> list[str]:
    """``error: CODE (REASON): message``, said once, then only what adds to it.

    The broker's INVALID_ARGUMENT message already joins its field violations
    (``field: description; ...``), so a violation gets its own line only when
    the message does not say it. The reason is left out when it only repeats
    the code. A RetryInfo becomes "try again in N min"; a connection that
    failed before reaching the broker gets a one-line hint naming the flag or
    variable to fix (``hints.connection_hint``), with ``tls`` the settings used.
    """
    code = err.code_name
    head = code + (f" ({err.reason})" if err.reason and err.reason != code else "")
    message = _one_line(err.message)
    unreached = err.code_name == "UNAVAILABLE" and not err.reason
    if unreached and addr:
        message = f"cannot reach the broker at {addr}" + (f": {message}" if message else "")
    lines = [f"error: {head}: {message}" if message else f"error: {head}"]
    for v in err.violations:
        said = f"{v.field}: {_one_line(v.description)}"
        if said not in message:
            lines.append(f"  {said}")
    if err.retry_after is not None:
        lines.append(f"  try again in {duration(err.retry_after, round_up=True)}")
    if unreached:
        hint = connection_hint(err.message, tls)
        if hint:
            lines.append(f"  hint: {hint}")
    return lines
