"""The domain journal: every committed change of a domain, logged once and counted.

It is the store's ``StoreObserver``: every write (use cases, scheduler, tools)
commits through the store, so this is the one place a state change is seen,
exactly once, after it is true. Lines carry structured fields (``domain``,
``app``, ``from_state``, ``to_state``, ``reason``) that the JSON log format
emits as keys; the readable format has them in the message.

What is logged, and why at that level:

- a domain added or removed, a custom certificate installed or removed: INFO
  (a person did it; the log answers "who changed what when" with the trace id);
- a Let's Encrypt state change, ``FROM -> TO`` with the reason: INFO, or
  WARNING when it moves into ACTION_REQUIRED;
- a new problem (reason or message differs from the last one), with the full
  message, e.g. the CA's problem detail or what is not configured: WARNING
  for a failed try or a configuration gap, INFO for waiting (DNS not pointing
  yet, a delegation to create, a quota slot); the same problem seen again on
  the next check is not repeated;
- what DNS answers when that changes: INFO.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from certbroker.metrics import Metrics
from certbroker.model import Domain, LetsEncryptState
from certbroker.store.base import Change

log = logging.getLogger(__name__)
# Problems only the operator can fix: WARNING even though no attempt was counted.
_OPERATOR = frozenset({"NOT_CONFIGURED", "INTERNAL"})


class Journal:
    """``StoreObserver``: logs each change and hands the commit to ``Metrics``."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics or Metrics()

    def committed(self, changes: Sequence[Change], seconds: float) -> None:
        for change in changes:
            describe(change)
        self._metrics.domains_changed(changes, seconds)


def _fields(domain: Domain, **more: str) -> dict[str, str]:
    return {"domain": domain.name, "app": domain.app, **more}


def _reason(before: Domain, after: Domain) -> str:
    """Why the state moved: a new certificate, a user's switch, else the recorded problem."""
    if after.le_cert is not None and (
        before.le_cert is None or before.le_cert.id != after.le_cert.id
    ):
        return "CERTIFICATE_ISSUED"
    if before.custom_cert != after.custom_cert:
        return "CUSTOM_INSTALLED" if after.custom_cert is not None else "CUSTOM_REMOVED"
    if before.letsencrypt_enabled != after.letsencrypt_enabled:
        return "LETSENCRYPT_ENABLED" if after.letsencrypt_enabled else "LETSENCRYPT_DISABLED"
    problem = after.retry
    if problem.last_error_reason and problem.last_error_at != before.retry.last_error_at:
        return problem.last_error_reason  # the step recorded why
    if after.le_state is LetsEncryptState.CREATING:
        return "ORDER_STARTED"
    if before.serving != after.serving:
        return f"SERVING_{after.serving.value}"  # a certificate started or stopped being valid
    return problem.last_error_reason or "UNKNOWN"


def describe(change: Change) -> None:
    """Log one committed change (see the module docstring for what and at which level)."""
    before, after = change.before, change.after
    if after is None:
        if before is not None:
            log.info("domain %s removed (app %s)", before.name, before.app, extra=_fields(before))
        return
    if before is None:
        log.info(
            "domain %s added (app %s, %s, %s)",
            after.name,
            after.app,
            after.le_state.value,
            after.challenge.value,
            extra=_fields(after, to_state=after.le_state.value),
        )
        return
    custom_before, custom_after = before.custom_cert, after.custom_cert
    if custom_after is not None and (
        custom_before is None or custom_before.sha256_fingerprint != custom_after.sha256_fingerprint
    ):
        log.info(
            "custom certificate installed for %s (sha256 %s, until %s)",
            after.name,
            custom_after.sha256_fingerprint,
            custom_after.not_after.isoformat(),
            extra=_fields(after),
        )
    elif custom_after is None and custom_before is not None:
        log.info("custom certificate removed from %s", after.name, extra=_fields(after))
    if before.le_state is not after.le_state:
        reason = _reason(before, after)
        level = (
            logging.WARNING if after.le_state is LetsEncryptState.ACTION_REQUIRED else logging.INFO
        )
        log.log(
            level,
            "domain %s: %s -> %s (%s)",
            after.name,
            before.le_state.value,
            after.le_state.value,
            reason,
            extra=_fields(
                after,
                from_state=before.le_state.value,
                to_state=after.le_state.value,
                reason=reason,
            ),
        )
    problem = after.retry
    if problem.last_error_reason and (
        problem.last_error_reason != before.retry.last_error_reason
        or problem.last_error_message != before.retry.last_error_message
    ):
        failed = problem.attempt > before.retry.attempt or problem.last_error_reason in _OPERATOR
        log.log(
            logging.WARNING if failed else logging.INFO,
            "domain %s: %s: %s (attempt %d, next try %s)",
            after.name,
            problem.last_error_reason,
            problem.last_error_message,
            problem.attempt,
            problem.next_attempt_at.isoformat() if problem.next_attempt_at else "none",
            extra=_fields(after, reason=problem.last_error_reason, state=after.le_state.value),
        )
    if after.dns is not None and (
        before.dns is None
        or before.dns.answered != after.dns.answered
        or before.dns.points_to_platform != after.dns.points_to_platform
    ):
        log.info(
            "DNS for %s answers %s (expected %s): %s",
            after.name,
            ", ".join(after.dns.answered) or "nothing",
            ", ".join(after.dns.expected) or "-",
            "points at the platform" if after.dns.points_to_platform else "not pointing yet",
            extra=_fields(after, points_to_platform=str(after.dns.points_to_platform).lower()),
        )
