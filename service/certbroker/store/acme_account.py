"""The ACME account, kept in the store's meta table with its key sealed under the KEK."""

from __future__ import annotations

import asyncio
import json

from certbroker.acme.keys import generate_private_key
from certbroker.ports import Sealer
from certbroker.store.base import Store

META_PREFIX = "acme_account"  # meta key: f"{META_PREFIX}:{directory_url}"
KEY_AAD = "certbroker:acme-account"  # the account key is sealed bound to this


class StoredAccount:
    """``AccountStore`` for the ACME issuer: one account per broker database.

    Every broker on a shared store must use the same account: an order belongs to
    the account that placed it, and a broker taking over a domain mid-order resumes
    that order. So ``load`` settles the account *key* first (``ensure_meta``: the
    first broker's key wins when several start together on a new database) and
    answers it with no URL yet; each broker then looks the key up at the CA or
    registers it, and a CA answers a second registration of one key with the
    first's account (RFC 8555 section 7.3.1).
    """

    def __init__(self, store: Store, sealer: Sealer, directory_url: str) -> None:
        self._store = store
        self._sealer = sealer
        self._key = f"{META_PREFIX}:{directory_url}"

    async def load(self) -> tuple[bytes, str] | None:
        raw = await self._store.get_meta(self._key)
        if raw is None:
            key_pem = await asyncio.to_thread(generate_private_key)
            async with self._store.transaction() as tx:
                raw = await tx.ensure_meta(self._key, self._encode(key_pem, ""))
        data = json.loads(raw)
        key_pem = self._sealer.open(bytes.fromhex(data["key_sealed"]), KEY_AAD)
        return key_pem, str(data["url"])

    async def save(self, key_pem: bytes, url: str) -> None:
        async with self._store.transaction() as tx:
            await tx.set_meta(self._key, self._encode(key_pem, url))

    def _encode(self, key_pem: bytes, url: str) -> bytes:
        sealed = self._sealer.seal(key_pem, KEY_AAD)
        return json.dumps({"key_sealed": sealed.hex(), "url": url}).encode()
