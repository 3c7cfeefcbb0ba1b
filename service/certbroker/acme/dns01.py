"""DNS-01 answers written into the broker's own zone by RFC 2136 updates signed with TSIG.

The customer delegated ``_acme-challenge.<base>`` to ``<label>.<zone>`` once
(``certbroker.delegation``); for every order the issuer asks this updater to
``publish`` the challenge's TXT value there and to ``unpublish`` it when the
order ends. Callers name the *label* (the one stored with the domain, bound to
its owner), never the domain: the updater cannot derive where a domain's
values go, so it cannot write them where another app's delegation points.
``publish`` returns only when the zone's primary (the server the updates go
to, asked without recursion) answers the new value, so the CA is never asked
to validate before the record exists.

Values are *added* and removed one by one, never replaced: a wildcard and its
apex (two authorizations, one ``_acme-challenge`` name) or two overlapping
orders each have their own value at the same name, and the CA accepts any one
of a TXT set.

Failures are ``AcmeProblem`` so the scheduler's one backoff handles them:

=====================  ====================================================  =========
reason                 when                                                  retryable
=====================  ====================================================  =========
DNS01_UPDATE_REFUSED   TSIG rejected (unknown key, wrong secret, clock       no
                       skew), REFUSED/NOTAUTH/NOTZONE: a configuration
                       problem a person must fix
DNS01_UPDATE_FAILED    no answer (timeout, connection refused), SERVFAIL     yes
DNS01_NOT_VISIBLE      the update was accepted but the server did not        yes
                       answer the value in time
=====================  ====================================================  =========

``check_access`` sends an update that changes nothing (delete a TXT value
that does not exist) with the same key, name and type as a real one, so a
wrong key is found *before* an order exists at the CA.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update
from dns.rdtypes.ANY.TXT import TXT

from certbroker import delegation
from certbroker.acme.problems import AcmeProblem

UPDATE_REFUSED: Final = "DNS01_UPDATE_REFUSED"
UPDATE_FAILED: Final = "DNS01_UPDATE_FAILED"
NOT_VISIBLE: Final = "DNS01_NOT_VISIBLE"

#: TSIG algorithms accepted in key files (BIND's names); dnspython knows each.
ALGORITHMS: Final = frozenset(
    {"hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5"}
)
_PROBE_VALUE: Final = "certbroker-access-check"
_BIND_KEY = re.compile(
    r"""key\s+"?(?P<name>[^"\s{]+)"?\s*\{(?P<body>[^}]*)\}\s*;""", re.IGNORECASE | re.DOTALL
)
_BIND_ALG = re.compile(r"algorithm\s+\"?(?P<alg>[A-Za-z0-9.-]+)\"?\s*;", re.IGNORECASE)
_BIND_SECRET = re.compile(r"secret\s+\"(?P<secret>[^\"]+)\"\s*;", re.IGNORECASE)


class Dns01Error(AcmeProblem):
    """A DNS-01 publication failed; ``reason`` is one of the module's codes."""


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key: name, algorithm (BIND's spelling) and base64 secret (never printed)."""

    name: str
    algorithm: str
    secret: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> TsigKey:
        """Read BIND's ``key "name" { algorithm hmac-sha256; secret "..."; };`` (what
        ``tsig-keygen`` prints) or one line ``name:algorithm:secret``.

        Raises ``ValueError`` naming what is wrong (never the secret).
        """
        stripped = "\n".join(
            line for line in text.splitlines() if not line.strip().startswith(("#", "//"))
        ).strip()
        match = _BIND_KEY.search(stripped)
        if match:
            body = match.group("body")
            alg = _BIND_ALG.search(body)
            secret = _BIND_SECRET.search(body)
            if alg is None or secret is None:
                raise ValueError("key block needs both 'algorithm ...;' and 'secret \"...\";'")
            name, algorithm, value = match.group("name"), alg.group("alg"), secret.group("secret")
        else:
            parts = stripped.split(":", 2)
            if len(parts) != 3 or "\n" in stripped:
                raise ValueError(
                    'expected a BIND key block (key "name" { algorithm ...; secret "..."; };) '
                    "or one line name:algorithm:secret"
                )
            name, algorithm, value = (p.strip() for p in parts)
        algorithm = algorithm.lower().rstrip(".")
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"unsupported TSIG algorithm {algorithm!r} (one of {', '.join(sorted(ALGORITHMS))})"
            )
        try:
            dns.name.from_text(name)
            if not base64.b64decode(value, validate=True):
                raise ValueError("empty secret")
        except (binascii.Error, ValueError, dns.exception.DNSException) as e:
            raise ValueError(
                f"bad key name or secret for key {name!r}: {type(e).__name__}"
            ) from None
        return cls(name.rstrip("."), algorithm, value)

    @classmethod
    def load(cls, path: str | Path) -> TsigKey:
        return cls.parse(Path(path).read_text())

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        name = dns.name.from_text(self.name)
        return {name: dns.tsig.Key(name, self.secret, self.algorithm)}


def _describe_peer_error(e: dns.tsig.PeerError) -> str:
    if isinstance(e, dns.tsig.PeerBadKey):
        return "does not know the key (BADKEY): check the key name"
    if isinstance(e, dns.tsig.PeerBadSignature):
        return "rejected the signature (BADSIG): the secret or algorithm is wrong"
    if isinstance(e, dns.tsig.PeerBadTime):
        return "rejected the signature time (BADTIME): the clocks differ by more than 5 minutes"
    return f"rejected the TSIG signature ({type(e).__name__})"


class Dns01Updater:
    """Publishes DNS-01 TXT values at ``<label>.<zone>``; no I/O in the constructor.

    ``server`` is the zone's primary (``host``, ``port``): updates go there and
    visibility is checked there. ``ttl`` is the TXT records' TTL.
    """

    def __init__(
        self,
        zone: str,
        server: tuple[str, int],
        key: TsigKey,
        *,
        timeout: float = 5.0,
        visible_timeout: float = 30.0,
        poll_interval: float = 0.1,
        ttl: int = 60,
    ) -> None:
        self.zone = zone.strip().rstrip(".").lower()
        self._zone = dns.name.from_text(self.zone)
        self._host, self._port = server
        self._key = key
        self._keyring = key.keyring()
        self._timeout = timeout
        self._visible_timeout = visible_timeout
        self._poll_interval = poll_interval
        self._ttl = ttl

    def record_name(self, label: str) -> str:
        """``<label>.<zone>``: where the TXT values of the delegation ``label`` go.

        Raises ``ValueError`` if ``label`` is not one DNS label.
        """
        return delegation.target(label, self.zone)

    # -- updates ----------------------------------------------------------------

    async def _send(self, update: dns.update.UpdateMessage, what: str) -> None:
        where = f"{self._host}:{self._port}"
        try:
            response = await dns.asyncquery.tcp(
                update, self._host, port=self._port, timeout=self._timeout
            )
        except dns.tsig.PeerError as e:
            raise Dns01Error(
                UPDATE_REFUSED,
                f"{what}: the DNS server {where} {_describe_peer_error(e)} "
                f"(TSIG key {self._key.name!r}, CERTBROKER_DNS01_TSIG_KEY)",
                retryable=False,
            ) from None
        except (dns.exception.Timeout, TimeoutError) as e:
            raise Dns01Error(
                UPDATE_FAILED,
                f"{what}: no answer from the DNS server {where} within {self._timeout:g} s",
                retryable=True,
            ) from e
        except (OSError, dns.exception.DNSException) as e:
            raise Dns01Error(
                UPDATE_FAILED,
                f"{what}: the DNS server {where} could not be reached ({type(e).__name__}: {e})",
                retryable=True,
            ) from e
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        text = dns.rcode.to_text(rcode)
        if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
            raise Dns01Error(
                UPDATE_REFUSED,
                f"{what}: the DNS server {where} refused the update ({text}); check that it is "
                f"primary for {self.zone} and lets TSIG key {self._key.name!r} update TXT records "
                "there (CERTBROKER_DNS01_ZONE, CERTBROKER_DNS01_SERVER, CERTBROKER_DNS01_TSIG_KEY)",
                retryable=False,
            )
        raise Dns01Error(
            UPDATE_FAILED, f"{what}: the DNS server {where} answered {text}", retryable=True
        )

    def _update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(
            self._zone, keyring=self._keyring, keyalgorithm=self._key.algorithm
        )

    @staticmethod
    def _txt(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    async def check_access(self, label: str) -> None:
        """Prove the key may update ``label``'s record, changing nothing."""
        await self.check_access_at(self.record_name(label))

    async def publish(self, label: str, value: str) -> None:
        """Add ``value`` at ``label``'s record; return once the primary answers it."""
        await self.publish_at(self.record_name(label), value)

    async def unpublish(self, label: str, value: str) -> None:
        """Remove ``value`` (only that one) from ``label``'s record."""
        await self.unpublish_at(self.record_name(label), value)

    # -- by name: the platform's own ``_acme-challenge`` names (``Dns01Publisher``) ----

    def _in_zone(self, name: str) -> str:
        name = name.strip().rstrip(".").lower()
        if name != self.zone and not name.endswith("." + self.zone):
            raise ValueError(f"{name} is not in the zone {self.zone}")
        return name

    async def check_access_at(self, name: str) -> None:
        """Prove the key may update the TXT record ``name`` (in the zone), changing nothing."""
        name = self._in_zone(name)
        update = self._update()
        update.delete(name + ".", "TXT", self._txt(_PROBE_VALUE))
        await self._send(update, f"checking DNS-01 access for {name}")

    async def publish_at(self, name: str, value: str) -> None:
        """Add ``value`` at ``name`` (in the zone); return once the primary answers it."""
        name = self._in_zone(name)
        update = self._update()
        update.add(name + ".", self._ttl, "TXT", self._txt(value))
        await self._send(update, f"publishing the DNS-01 record {name}")
        await self._wait_visible(name, value)

    async def unpublish_at(self, name: str, value: str) -> None:
        """Remove ``value`` (only that one) from ``name`` (in the zone)."""
        name = self._in_zone(name)
        update = self._update()
        update.delete(name + ".", "TXT", self._txt(value))
        await self._send(update, f"removing the DNS-01 record {name}")

    # -- visibility -------------------------------------------------------------

    async def values(self, name: str) -> tuple[str, ...]:
        """The TXT values the primary itself holds at ``name`` (asked without recursion)."""
        query = dns.message.make_query(name + ".", dns.rdatatype.TXT)
        query.flags &= ~dns.flags.RD
        response = await dns.asyncquery.udp(
            query, self._host, port=self._port, timeout=self._timeout
        )
        if response.flags & dns.flags.TC:
            response = await dns.asyncquery.tcp(
                query, self._host, port=self._port, timeout=self._timeout
            )
        owner = dns.name.from_text(name + ".")
        return tuple(
            b"".join(rd.strings).decode("utf-8", errors="replace")
            for rrset in response.answer
            if rrset.name == owner and rrset.rdtype == dns.rdatatype.TXT
            for rd in rrset
            if isinstance(rd, TXT)
        )

    async def _wait_visible(self, name: str, value: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._visible_timeout
        last = ""
        while True:
            try:
                if value in await self.values(name):
                    return
                last = "the value is not there yet"
            except (OSError, dns.exception.DNSException) as e:
                last = f"{type(e).__name__}: {e}"
            if loop.time() >= deadline:
                raise Dns01Error(
                    NOT_VISIBLE,
                    f"{self._host}:{self._port} did not answer the new TXT value at {name} "
                    f"within {self._visible_timeout:g} s ({last})",
                    retryable=True,
                )
            await asyncio.sleep(self._poll_interval)


class Dns01Publisher:
    """Where an order's DNS-01 values go: a delegation's record, or a platform domain's own name.

    The issuer names a *label* for every DNS-01 order (``Dns01Responder``). For
    an app's domain it is the delegation label, written at ``<label>.<zone>``
    by ``delegation`` (the updater of ``CERTBROKER_DNS01_ZONE``). For one of
    the platform's own domains (``certbroker.platform``) it is that domain's
    challenge name, ``_acme-challenge.<base>``, written at that very name in
    the platform's zone: no customer, no CNAME. Only names registered here at
    start (the configured platform domains) take that route; a challenge name
    can never be a delegation label (it has a dot and an underscore), and any
    other label goes to the delegation updater, which refuses what is not one
    DNS label. So no app's order can write anywhere in the platform's zone.
    No I/O in the constructor.
    """

    def __init__(
        self, delegation: Dns01Updater | None, platform: dict[str, Dns01Updater] | None = None
    ) -> None:
        self._delegation = delegation
        self._platform = {
            name.strip().rstrip(".").lower(): updater for name, updater in (platform or {}).items()
        }

    @property
    def zone(self) -> str:
        """The delegation zone (CERTBROKER_DNS01_ZONE); "" when only platform names are set."""
        return self._delegation.zone if self._delegation is not None else ""

    @property
    def delegates(self) -> bool:
        """Whether app domains can use DNS-01 (a delegation zone is configured)."""
        return self._delegation is not None

    def _route(self, label: str) -> tuple[Dns01Updater, str] | None:
        """(updater, record name) for a platform challenge name; None for a delegation label."""
        updater = self._platform.get(label)
        return (updater, label) if updater is not None else None

    def _delegation_updater(self, label: str) -> Dns01Updater:
        if self._delegation is None:
            raise Dns01Error(
                UPDATE_REFUSED,
                "DNS-01 by delegation is not configured (CERTBROKER_DNS01_ZONE is not set)",
                retryable=False,
            )
        return self._delegation

    async def check_access(self, label: str) -> None:
        route = self._route(label)
        if route is not None:
            await route[0].check_access_at(route[1])
        else:
            await self._delegation_updater(label).check_access(label)

    async def publish(self, label: str, value: str) -> None:
        route = self._route(label)
        if route is not None:
            await route[0].publish_at(route[1], value)
        else:
            await self._delegation_updater(label).publish(label, value)

    async def unpublish(self, label: str, value: str) -> None:
        route = self._route(label)
        if route is not None:
            await route[0].unpublish_at(route[1], value)
        else:
            await self._delegation_updater(label).unpublish(label, value)
