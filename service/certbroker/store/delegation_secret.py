"""The secret DNS-01 delegation labels are derived from, kept in the store sealed under the KEK.

Why in the store: every replica of the broker (and a restore of the database)
must derive the same label for the same (app, name), or customers' CNAMEs
would stop matching. Why sealed: with the secret anyone could compute which
app a public CNAME target belongs to (``certbroker.delegation``).
"""

from __future__ import annotations

import secrets
from typing import Final

from certbroker.delegation import SECRET_BYTES, LabelKey
from certbroker.ports import Sealer
from certbroker.store.base import Store

META_KEY: Final = "dns01_label_secret"
LABEL_AAD: Final = "certbroker:dns01-label-secret"  # the secret is sealed bound to this


async def load_label_key(store: Store, sealer: Sealer) -> LabelKey:
    """The store's label key, created on first start.

    Two brokers starting at once on a new store may both generate one; the
    store keeps the first (``ensure_meta``) and both use it. Raises the
    sealer's error (``KekError``) if the stored secret does not open.
    """
    sealed = await store.get_meta(META_KEY)
    if sealed is None:
        fresh = sealer.seal(secrets.token_bytes(SECRET_BYTES), LABEL_AAD)
        async with store.transaction() as tx:
            sealed = await tx.ensure_meta(META_KEY, fresh)
    return LabelKey(sealer.open(sealed, LABEL_AAD))
