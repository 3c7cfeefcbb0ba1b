"""Brokers starting together on a new shared database agree on one KEK, or one refuses to start.

Both may read "no canary yet" before either writes one. The second writer must not
replace the first's canary (the first broker would then seal keys no one else can
check); it keeps the first's and, holding another KEK, stops with the usual error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from certbroker.config import Settings
from certbroker.server import StartupError, _open_sealer
from tests.store.backends import AnyStore


class ReadBeforeTheOtherWrote:
    """The store as a broker saw it a moment ago: no canary yet."""

    def __init__(self, store: AnyStore) -> None:
        self._store = store

    async def get_meta(self, key: str) -> bytes | None:
        return None if key == "kek_canary" else await self._store.get_meta(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_the_second_of_two_brokers_with_another_kek_is_refused(
    store: AnyStore, tmp_path: Path
) -> None:
    first = await _open_sealer(Settings(kek_file=str(tmp_path / "a" / "kek")), store)
    canary = await store.get_meta("kek_canary")
    with pytest.raises(StartupError, match="not the key-encryption key"):
        await _open_sealer(
            Settings(kek_file=str(tmp_path / "b" / "kek")),
            ReadBeforeTheOtherWrote(store),  # type: ignore[arg-type]
        )
    assert await store.get_meta("kek_canary") == canary  # the first's canary stays
    assert first.open(canary or b"", "certbroker:kek-canary")


async def test_two_brokers_with_the_same_kek_both_start(store: AnyStore, tmp_path: Path) -> None:
    settings = Settings(kek_file=str(tmp_path / "kek"))
    await _open_sealer(settings, store)
    again = await _open_sealer(settings, ReadBeforeTheOtherWrote(store))  # type: ignore[arg-type]
    canary = await store.get_meta("kek_canary")
    assert canary is not None and again.open(canary, "certbroker:kek-canary")
