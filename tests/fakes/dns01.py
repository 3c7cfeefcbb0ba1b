"""``ports.Dns01Access`` in memory: the broker's zone, and whether our key may update it."""

from __future__ import annotations

from dataclasses import dataclass, field

from certbroker.acme.problems import AcmeProblem


@dataclass
class FakeDns01:
    zone: str = "acme.platform.test"
    refuse: AcmeProblem | None = None
    checked: list[str] = field(default_factory=list)

    async def check_access(self, label: str) -> None:
        self.checked.append(label)
        if self.refuse is not None:
            raise self.refuse
