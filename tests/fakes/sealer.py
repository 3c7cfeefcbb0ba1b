"""``ports.Sealer`` that counts: a key must be sealed once and opened only to resume."""

from __future__ import annotations

from dataclasses import dataclass

_MARK = b"sealed:"


@dataclass
class CountingSealer:
    seals: int = 0
    opens: int = 0

    def seal(self, plaintext: bytes, aad: str) -> bytes:
        self.seals += 1
        return _MARK + aad.encode() + b"\0" + plaintext

    def open(self, blob: bytes, aad: str) -> bytes:
        self.opens += 1
        head, _, plaintext = blob.partition(b"\0")
        if head != _MARK + aad.encode():
            raise ValueError("sealed for another domain")
        return plaintext
