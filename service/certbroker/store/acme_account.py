"""The ACME account, kept in the store's meta table with its key sealed under the KEK."""

from __future__ import annotations

import json

from certbroker.ports import Sealer
from certbroker.store.base import Store

META_PREFIX = "acme_account"  # meta key: f"{META_PREFIX}:{directory_url}"
KEY_AAD = "certbroker:acme-account"  # the account key is sealed bound to this


class StoredAccount:
    """``AccountStore`` for the ACME issuer: one account per broker database."""

    def __init__(self, store: Store, sealer: Sealer, directory_url: str) -> None:
        self._store = store
        self._sealer = sealer
        self._key = f"{META_PREFIX}:{directory_url}"

    async def load(self) -> tuple[bytes, str] | None:
        raw = await self._store.get_meta(self._key)
        if raw is None:
            return None
        data = json.loads(raw)
        key_pem = self._sealer.open(bytes.fromhex(data["key_sealed"]), KEY_AAD)
        return key_pem, str(data["url"])

    async def save(self, key_pem: bytes, url: str) -> None:
        sealed = self._sealer.seal(key_pem, KEY_AAD)
        value = json.dumps({"key_sealed": sealed.hex(), "url": url}).encode()
        async with self._store.transaction() as tx:
            await tx.set_meta(self._key, value)
