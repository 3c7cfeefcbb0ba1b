"""``--wait``: follow one domain through WatchStatus until it settles, saying what happens.

Why a stream rather than polling GetStatus: every step the broker takes
(a DNS check, a failed order and its retry time, the certificate arriving)
is an event on the domain, so the person waiting sees each one as it happens
and the broker is not asked the same question every second. The watch starts
after the revision the caller already has (the reply of IssueCertificate or
GetStatus), so nothing between that reply and the stream is missed, and it
resumes by itself if the broker restarts meanwhile (``BrokerClient.watch``).

Where waiting ends (``verdict``): IN_USE or NOT_USED (a certificate serves:
success), ACTION_REQUIRED (the customer must act: the action is printed),
DISABLED (nothing more will happen), the domain removed, or the deadline.
A renewal (``renewing``) waits past IN_USE until the retry counter is back to
0 and the renewal time is in the future again, because the old certificate
keeps serving (and the state stays IN_USE) while the new one is ordered.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client import render
from certbroker_client.client import BrokerClient

__all__ = ["Outcome", "Verdict", "follow", "progress_line", "verdict"]

DEFAULT_TIMEOUT = timedelta(minutes=10)


_NOTHING = (domain_pb2.CERTIFICATE_SOURCE_UNSPECIFIED, domain_pb2.CERTIFICATE_SOURCE_NONE)


class Outcome(enum.Enum):
    SETTLED = "settled"  # a certificate serves (IN_USE, NOT_USED, DISABLED with custom)
    STOPPED = "stopped"  # ACTION_REQUIRED, DISABLED with nothing serving, removed
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    words: str


def _serving_words(d: domain_pb2.Domain, now: datetime) -> str:
    if d.serving_source == domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT:
        cert, what = d.lets_encrypt_certificate, "a Let's Encrypt certificate serves"
    elif d.serving_source == domain_pb2.CERTIFICATE_SOURCE_CUSTOM:
        cert, what = d.custom_certificate, "the custom certificate serves"
    else:
        return "nothing serves"
    at = render.when(cert.not_after)
    return what if at is None else f"{what}, expires in {render.duration(at - now)}"


def _renewal_pending(d: domain_pb2.Domain, now: datetime) -> bool:
    if d.retry.attempt > 0:
        return True
    due = render.when(d.renewal_time)
    return due is not None and due <= now


def verdict(d: domain_pb2.Domain, now: datetime, *, renewing: bool = False) -> Verdict | None:
    """Whether waiting is over for ``d``, and the last words; None: keep waiting."""
    state = d.lets_encrypt_state
    if state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE:
        if renewing and _renewal_pending(d, now):
            return None
        words = f"In use: {_serving_words(d, now)}"
        if d.action_required:  # a DNS-01 delegation removed after issuance
            words += f"; action required before the renewal: {d.action_required}"
        return Verdict(Outcome.SETTLED, words)
    if state == domain_pb2.LETS_ENCRYPT_STATE_NOT_USED:
        return Verdict(Outcome.SETTLED, f"Not used: {_serving_words(d, now)}")
    if state == domain_pb2.LETS_ENCRYPT_STATE_ACTION_REQUIRED:
        return Verdict(Outcome.STOPPED, f"Action required: {d.action_required or '(no details)'}")
    if state == domain_pb2.LETS_ENCRYPT_STATE_DISABLED:
        if d.serving_source not in _NOTHING:
            words = f"Disabled (--no-letsencrypt): {_serving_words(d, now)}"
            return Verdict(Outcome.SETTLED, words)
        return Verdict(
            Outcome.STOPPED,
            "Disabled (--no-letsencrypt) and nothing serves: upload a certificate "
            "(domains-ssl --cert --key) or add the domain without --no-letsencrypt",
        )
    return None


def _elapsed(span: timedelta) -> str:
    seconds = max(0, int(span.total_seconds()))
    return f"+{seconds // 60}:{seconds % 60:02d}"


_WORKING = (domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS, domain_pb2.LETS_ENCRYPT_STATE_CREATING)


def progress_line(d: domain_pb2.Domain, now: datetime, elapsed: timedelta) -> str:
    """``+0:12 www.example.com: Pending DNS; DNS_NOT_POINTING: ...; next try in 48 s``.

    The last failure and the next try are shown while the broker is working
    on the domain, or while a retry counter runs (a renewal failing behind a
    certificate that still serves).
    """
    parts = [render.lets_encrypt_label(d.lets_encrypt_state)]
    retry = d.retry
    working = d.lets_encrypt_state in _WORKING or retry.attempt > 0
    if working and retry.last_error_reason:
        failure = retry.last_error_reason
        if retry.last_error_message:
            failure += f": {' '.join(retry.last_error_message.split())}"
        if retry.attempt > 0:
            failure = f"attempt {retry.attempt} failed: {failure}"
        parts.append(failure)
    next_try = render.when(retry.next_attempt_time)
    if working and next_try is not None:
        parts.append(
            "next try now" if next_try <= now else f"next try {render.relative(next_try, now)}"
        )
    return f"{_elapsed(elapsed)} {d.domain}: " + "; ".join(parts)


def _change_key(d: domain_pb2.Domain) -> tuple[object, ...]:
    """What a person waiting would call a change (not the times of the next check)."""
    return (
        d.lets_encrypt_state,
        d.serving_source,
        d.retry.attempt,
        d.retry.last_error_reason,
        d.retry.last_error_message,
        d.action_required,
        d.lets_encrypt_certificate.sha256_fingerprint,
        d.custom_certificate.sha256_fingerprint,
    )


async def follow(
    client: BrokerClient,
    domain: domain_pb2.Domain,
    *,
    patience: timedelta,
    emit: Callable[[str], None],
    clock: Callable[[], datetime],
    renewing: bool = False,
) -> tuple[Outcome, domain_pb2.Domain]:
    """Print a line per visible change of ``domain`` until ``verdict`` says stop or time is up.

    ``domain`` is its latest known status (its revision is where the watch
    starts); the last status seen is returned with the outcome.
    """
    started = clock()
    emit(progress_line(domain, started, timedelta(0)))
    last = domain
    seen = _change_key(domain)
    done = verdict(domain, started, renewing=renewing)
    if done is not None:
        emit(done.words)
        return done.outcome, domain
    events = client.watch(domain.revision, domains=[domain.domain])
    try:
        async with contextlib.aclosing(events), asyncio.timeout(patience.total_seconds()):
            async for event in events:
                if event.type == broker_pb2.EVENT_TYPE_DOMAIN_REMOVED:
                    emit(f"{domain.domain} was removed")
                    return Outcome.STOPPED, event.domain
                if not event.HasField("domain") or event.domain.domain != domain.domain:
                    continue  # SNAPSHOT_COMPLETE after a resnapshot, or another name
                last = event.domain
                now = clock()
                if _change_key(last) != seen:
                    seen = _change_key(last)
                    emit(progress_line(last, now, now - started))
                done = verdict(last, now, renewing=renewing)
                if done is not None:
                    emit(done.words)
                    return done.outcome, last
    except TimeoutError:
        pass
    label = render.lets_encrypt_label(last.lets_encrypt_state)
    emit(
        f"gave up waiting after {render.duration(patience)}: {domain.domain} is still {label} "
        f"(the broker keeps working on it; `certbroker status {domain.domain}` shows where it is)"
    )
    return Outcome.TIMED_OUT, last
