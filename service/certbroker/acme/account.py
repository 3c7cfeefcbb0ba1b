"""The broker's one ACME account: found again after a restart, registered once.

After a restart the stored key finds its account with ``onlyReturnExisting``
(the URL comes back in ``ConflictError.location``); if the CA no longer knows
it (a test CA restarted), the same key registers anew and the new URL is
saved. A retried ``newAccount`` that meets its own first attempt's account
(409) takes that URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy import jwa, jwk

from acme import client, messages
from acme import errors as acme_errors
from certbroker.acme.transport import Identity, Transport


class AccountStore(Protocol):
    """Where the ACME account lives between restarts.

    The broker's implementation seals the key at rest; ``MemoryAccountStore``
    is the plain one for tests and benchmarks. Both methods may raise the
    store's errors; ``save`` is idempotent (the last write wins).
    """

    async def load(self) -> tuple[bytes, str] | None:
        """The account key (PKCS#8 PEM) and account URL, or None before the first start."""
        ...

    async def save(self, key_pem: bytes, url: str) -> None: ...


class MemoryAccountStore:
    """An ``AccountStore`` in memory: survives a new ``AcmeIssuer``, not a new process."""

    def __init__(self) -> None:
        self.value: tuple[bytes, str] | None = None
        self.saves = 0

    async def load(self) -> tuple[bytes, str] | None:
        return self.value

    async def save(self, key_pem: bytes, url: str) -> None:
        self.value = (key_pem, url)
        self.saves += 1


def jwk_and_alg(key_pem: bytes) -> tuple[jwk.JWK, jwa.JWASignature]:
    """The account key as a JWK plus the JWS algorithm it signs with.

    ClientNetwork defaults to RS256, which an EC key cannot sign: ES256 must be
    passed explicitly.
    """
    key = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": jwa.ES256, "secp384r1": jwa.ES384, "secp521r1": jwa.ES512}
        if key.curve.name not in algs:
            raise ValueError(f"unsupported account key curve {key.curve.name}")
        return jwk.JWKEC(key=key), algs[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return jwk.JWKRSA(key=key), jwa.RS256
    raise ValueError(f"unsupported account key type {type(key).__name__}")


def new_account_key() -> bytes:
    """A fresh ECDSA P-256 account key as PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Account:
    """The directory and the identity every order is signed with."""

    directory: messages.Directory
    identity: Identity

    @property
    def url(self) -> str:
        assert self.identity.account is not None
        return str(self.identity.account.uri)


class AccountOpener:
    """Loads or creates the account through a ``Transport``; raises ``AcmeProblem``."""

    def __init__(
        self, transport: Transport, directory_url: str, store: AccountStore, email: str | None
    ) -> None:
        self._transport = transport
        self._directory_url = directory_url
        self._store = store
        self._email = email

    async def open(self) -> Account:
        """Fetch the directory, then find the stored account or register one."""
        directory = await self._transport.call(self._get_directory)
        stored = await self._store.load()
        if stored is None:
            key_pem = await self._transport.submit(new_account_key)
            url: str | None = None
        else:
            key_pem, stored_url = stored
            url = await self._transport.call(self._find, directory, key_pem)
            if url is not None and url != stored_url:
                await self._store.save(key_pem, url)
        if url is None:
            url = await self._transport.call(self._register, directory, key_pem)
            await self._store.save(key_pem, url)
        key, alg = jwk_and_alg(key_pem)
        account = messages.RegistrationResource(uri=url, body=messages.Registration())
        return Account(directory, Identity(key, alg, account))

    async def recover(self, *, new_key: bool) -> Account:
        """The account again after the CA forgot it (stored key: found, else registered
        again) or deactivated it (``new_key``: a deactivated account's key cannot register
        again at Let's Encrypt, so a new one is made). The store gets the result."""
        directory = await self._transport.call(self._get_directory)
        stored = await self._store.load()
        url: str | None = None
        if new_key or stored is None:
            key_pem = await self._transport.submit(new_account_key)
        else:
            key_pem = stored[0]
            url = await self._transport.call(self._find, directory, key_pem)
        if url is None:
            url = await self._transport.call(self._register, directory, key_pem)
        await self._store.save(key_pem, url)
        key, alg = jwk_and_alg(key_pem)
        account = messages.RegistrationResource(uri=url, body=messages.Registration())
        return Account(directory, Identity(key, alg, account))

    async def probe(self) -> None:
        """The directory answers (the CA is there)."""
        await self._transport.call(self._get_directory)

    def _get_directory(self) -> messages.Directory:
        net = self._transport.network()
        try:
            directory: messages.Directory = client.ClientV2.get_directory(self._directory_url, net)
            return directory
        finally:
            net.session.close()

    def _keyed_client(self, directory: messages.Directory, key_pem: bytes) -> client.ClientV2:
        """A client without account (``kid``): only for newAccount requests."""
        key, alg = jwk_and_alg(key_pem)
        return client.ClientV2(directory, self._transport.network(Identity(key, alg)))

    def _find(self, directory: messages.Directory, key_pem: bytes) -> str | None:
        acme = self._keyed_client(directory, key_pem)
        try:
            regr = acme.new_account(messages.NewRegistration(only_return_existing=True))
        except acme_errors.ConflictError as found:
            return str(found.location)
        except messages.Error as error:
            if error.code == "accountDoesNotExist":
                return None
            raise
        finally:
            acme.net.session.close()
        return str(regr.uri)

    def _register(self, directory: messages.Directory, key_pem: bytes) -> str:
        acme = self._keyed_client(directory, key_pem)
        try:
            if self._email:
                reg = messages.NewRegistration.from_data(
                    email=self._email, terms_of_service_agreed=True
                )
            else:
                reg = messages.NewRegistration(terms_of_service_agreed=True)
            try:
                regr = acme.new_account(reg)
            except acme_errors.ConflictError as found:  # a retried request already made it
                return str(found.location)
            return str(regr.uri)
        finally:
            acme.net.session.close()
