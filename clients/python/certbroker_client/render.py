"""Text and JSON renderings of broker messages for people and scripts.

Pure functions from proto messages to strings: no I/O, no clock (the broker
sends ``days_left`` itself), so the CLI's output is tested with plain values.
The words are the seed's dashboard words, so a person reading the CLI sees
the same statuses the documentation explains.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client.client import BrokerError

__all__ = [
    "domains_table",
    "error_lines",
    "lets_encrypt_label",
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


def format_time(ts: timestamp_pb2.Timestamp) -> str:
    """UTC to the second, or "-" when unset (the zero Timestamp is never a real time)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _expiry(domain: domain_pb2.Domain) -> str:
    """Expiry of the certificate that serves now, with days left."""
    if domain.serving_source == domain_pb2.CERTIFICATE_SOURCE_CUSTOM:
        cert = domain.custom_certificate
    elif domain.serving_source == domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT:
        cert = domain.lets_encrypt_certificate
    else:
        return "-"
    return _cert_expiry(cert)


def _cert_expiry(cert: domain_pb2.CertificateInfo) -> str:
    when = format_time(cert.not_after)
    if when == "-":
        return "-"
    return f"{when[:10]} ({cert.days_left}d)"


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


def domains_table(domains: Iterable[domain_pb2.Domain]) -> str:
    """One row per domain: what a person scans for ("which ones are stuck, and why")."""
    rows: list[list[str]] = []
    for d in domains:
        retry = d.retry
        failing = retry.attempt > 0
        rows.append(
            [
                d.domain,
                d.app,
                lets_encrypt_label(d.lets_encrypt_state),
                source_label(d.serving_source),
                _expiry(d),
                str(retry.attempt) if failing else "-",
                format_time(retry.next_attempt_time) if failing else "-",
                retry.last_error_reason or "-",
            ]
        )
    if not rows:
        return "no domains"
    return _table(_TABLE_HEADER, rows)


def _certificate_lines(title: str, cert: domain_pb2.CertificateInfo, serving: bool) -> list[str]:
    if not cert.sha256_fingerprint and not cert.serial:
        return [f"{title}: none"]
    lines = [f"{title}:" + ("  (serving)" if serving else "")]
    expiry = format_time(cert.not_after)
    if expiry != "-":
        left = cert.days_left
        expiry += f" (expired {-left} days ago)" if left < 0 else f" ({left} days left)"
    facts = [
        ("Names", ", ".join(cert.sans) or "-"),
        ("Subject", cert.subject or "-"),
        ("Issuer", cert.issuer or "-"),
        ("Serial", cert.serial or "-"),
        ("Valid from", format_time(cert.not_before)),
        ("Valid until", expiry),
        ("Key", cert.key_algorithm or "-"),
        ("SHA-256", cert.sha256_fingerprint or "-"),
    ]
    lines.extend(f"  {name + ':':<14}{value}" for name, value in facts)
    return lines


def status_block(d: domain_pb2.Domain) -> str:
    """Everything a person needs to see why a domain is where it is, without logs."""
    state = lets_encrypt_label(d.lets_encrypt_state)
    explanation = _LE_EXPLANATIONS.get(d.lets_encrypt_state)
    facts: list[tuple[str, str]] = [
        ("Domain", d.domain),
        ("App", d.app),
        ("Let's Encrypt", f"{state} ({explanation})" if explanation else state),
        ("Serving", source_label(d.serving_source)),
        ("Key algorithm", _KEY_LABELS.get(d.key_algorithm, str(d.key_algorithm))),
        ("Challenge", _CHALLENGE_LABELS.get(d.challenge_type, str(d.challenge_type))),
        ("Revision", str(d.revision)),
        ("Routers", _routers_line(d)),
        ("Created", format_time(d.create_time)),
        ("Updated", format_time(d.update_time)),
        ("Next check", format_time(d.next_check_time)),
        ("Renewal due", format_time(d.renewal_time)),
    ]
    lines = [f"{name + ':':<17}{value}" for name, value in facts]

    if d.action_required:
        lines.append(f"{'Action required:':<17}{d.action_required}")

    dns = d.dns
    if dns.answered or dns.expected or dns.check_time.seconds:
        verdict = "points to the platform" if dns.points_to_platform else "does NOT point to us"
        lines.append(f"{'DNS:':<17}{verdict} (checked {format_time(dns.check_time)})")
        lines.append(f"  {'answered:':<14}{', '.join(dns.answered) or '(nothing)'}")
        lines.append(f"  {'expected:':<14}{', '.join(dns.expected) or '-'}")
    else:
        lines.append(f"{'DNS:':<17}not checked")

    retry = d.retry
    if retry.attempt > 0 or retry.last_error_reason:
        lines.append(f"{'Retry:':<17}attempt {retry.attempt}")
        lines.append(f"  {'next try:':<14}{format_time(retry.next_attempt_time)}")
        if retry.last_error_reason or retry.last_error_message:
            lines.append(
                f"  {'last error:':<14}{retry.last_error_reason or '-'}"
                + (f": {retry.last_error_message}" if retry.last_error_message else "")
            )
            lines.append(f"  {'at:':<14}{format_time(retry.last_error_time)}")
    else:
        lines.append(f"{'Retry:':<17}no failures")

    if d.custom_certificate_expiring:
        lines.append("Warning:         the custom certificate expires within 14 days")

    lines.extend(
        _certificate_lines(
            "Let's Encrypt certificate",
            d.lets_encrypt_certificate,
            d.serving_source == domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT,
        )
    )
    lines.extend(
        _certificate_lines(
            "Custom certificate",
            d.custom_certificate,
            d.serving_source == domain_pb2.CERTIFICATE_SOURCE_CUSTOM,
        )
    )
    return "\n".join(lines)


def _routers_line(d: domain_pb2.Domain) -> str:
    if d.known_routers == 0:
        return "none reporting"
    return f"{d.serving_routers} of {d.known_routers} serve this revision"


_ROUTERS_HEADER = ("ROUTER", "IDENTITY", "APPLIED", "LAG", "DOMAINS", "LAST SEEN", "STATE")


def routers_table(routers: Iterable[broker_pb2.RouterStatus]) -> str:
    """One row per router: which one is behind ("LAG"), or silent ("stale")."""
    rows = [
        [
            r.router_id,
            r.identity or "-",
            str(r.applied_revision),
            str(r.lag),
            str(r.domain_count),
            format_time(r.last_seen_time),
            "live" if r.live else "stale",
        ]
        for r in routers
    ]
    if not rows:
        return "no routers reporting"
    return _table(_ROUTERS_HEADER, rows)


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


def error_lines(err: BrokerError, *, addr: str | None = None) -> list[str]:
    """``error: CODE (REASON): message`` then one line per field violation.

    For UNAVAILABLE without a broker-given reason the broker was never
    reached, so the line names the address that was tried.
    """
    head = err.code_name + (f" ({err.reason})" if err.reason else "")
    message = _one_line(err.message)
    if err.code_name == "UNAVAILABLE" and not err.reason and addr:
        message = f"cannot reach the broker at {addr}" + (f": {message}" if message else "")
    lines = [f"error: {head}: {message}" if message else f"error: {head}"]
    lines.extend(f"  {v.field}: {_one_line(v.description)}" for v in err.violations)
    if err.retry_after is not None:
        lines.append(f"  retry after {err.retry_after.total_seconds():g}s")
    return lines
