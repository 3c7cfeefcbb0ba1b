"""Who is calling, from the mTLS client certificate, and what that role may do.

Roles: ``router`` (reads, watches, reports what it serves, and is the only role
that receives private keys), ``api`` (manages domains, never keys), ``admin``
(everything but keys and reports). Without TLS (local development on loopback)
every caller is ``local``: it may manage domains and report, but never receives keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import grpc

from certbroker.errors import PermissionDenied, Unauthenticated


class Role(StrEnum):
    ROUTER = "router"
    API = "api"
    ADMIN = "admin"
    LOCAL = "local"


#: Roles that may change any app's domain, leaving ``app`` empty (``certbroker.tenancy``):
#: the operator, and the plaintext loopback development mode.
ACROSS_TENANTS: frozenset[Role] = frozenset({Role.ADMIN, Role.LOCAL})


class Permission(StrEnum):
    READ = "read"
    MANAGE = "manage"
    KEYS = "keys"
    REPORT = "report"


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ROUTER: frozenset({Permission.READ, Permission.KEYS, Permission.REPORT}),
    Role.API: frozenset({Permission.READ, Permission.MANAGE}),
    Role.ADMIN: frozenset({Permission.READ, Permission.MANAGE}),
    Role.LOCAL: frozenset({Permission.READ, Permission.MANAGE, Permission.REPORT}),
}


def grants(role: Role, permission: Permission) -> bool:
    """Whether ``role`` has ``permission`` (for replies that show more to some roles)."""
    return permission in _GRANTS[role]


def _identities(context: grpc.aio.ServicerContext) -> list[str]:
    auth = context.auth_context()
    names: list[str] = []
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        names.extend(value.decode() for value in auth.get(key, []))
    return names


class Authorizer:
    def __init__(self, tls: bool, roles: Mapping[str, str]) -> None:
        self._tls = tls
        self._roles = {name: Role(role) for name, role in roles.items()}

    def role(self, context: grpc.aio.ServicerContext) -> Role:
        return self.caller(context)[1]

    def caller(self, context: grpc.aio.ServicerContext) -> tuple[str, Role]:
        """The client-certificate name that gave the role (``local`` without TLS), and the role."""
        if not self._tls:
            return Role.LOCAL.value, Role.LOCAL
        identities = _identities(context)
        if not identities:
            raise Unauthenticated("a client certificate is required", reason="NO_CLIENT_IDENTITY")
        for identity in identities:
            if identity in self._roles:
                return identity, self._roles[identity]
        raise PermissionDenied(
            f"client {identities[0]!r} has no role here (configure CERTBROKER_ROLES)",
            reason="NO_ROLE",
        )

    def peer(self, context: grpc.aio.ServicerContext) -> str:
        """Whom a call counts against for fairness (``certbroker.api.fairness``).

        Under mTLS the client-certificate name that gives a role (else its first
        name): every connection and process of one client shares one budget.
        Without TLS the connection's address (``ipv4:127.0.0.1:40123``): callers
        cannot be told apart beyond their connections there.
        """
        if self._tls:
            identities = _identities(context)
            for identity in identities:
                if identity in self._roles:
                    return identity
            if identities:
                return identities[0]
        return str(context.peer())

    def require(self, context: grpc.aio.ServicerContext, permission: Permission) -> Role:
        role = self.role(context)
        if permission not in _GRANTS[role]:
            if permission is Permission.KEYS and role is Role.LOCAL:
                raise PermissionDenied(
                    "private keys are only sent over mTLS to the router role; "
                    "this broker runs in plaintext mode",
                    reason="KEYS_REQUIRE_MTLS",
                )
            raise PermissionDenied(
                f"role {role.value} may not {permission.value}", reason="ROLE_FORBIDDEN"
            )
        return role
