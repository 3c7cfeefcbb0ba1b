"""What ``certbroker doctor`` reports: one verdict per pre-flight check, in plain words.

Plain frozen values, no I/O; the API turns them into ``CheckDomainResponse``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Verdict(StrEnum):
    """How one check came out. Only FAIL stops issuance; WARN deserves a look."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class Check:
    """One check: a stable ``name``, its verdict, a sentence, the facts, and the fix.

    ``detail`` holds the facts one per line (records answered and expected, the
    deciding CAA record, the URL probed); ``fix`` what to do about a WARN or
    FAIL, ready to paste where it is a DNS record.
    """

    name: str
    verdict: Verdict
    summary: str
    detail: str = ""
    fix: str = ""


@dataclass(frozen=True)
class Report:
    """Every check of one domain, run at ``checked_at``, and what the broker does next."""

    domain: str
    app: str
    known: bool
    checks: tuple[Check, ...]
    next_action: str
    next_action_at: datetime | None
    checked_at: datetime

    @property
    def would_issue_now(self) -> bool:
        """No check failed: an order placed now would pass every pre-flight."""
        return all(check.verdict is not Verdict.FAIL for check in self.checks)

    def check(self, name: str) -> Check:
        """The check called ``name`` (``KeyError`` if there is none)."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)
