"""Settings, parsed once from the environment into a frozen object.

Every bad value is refused at start with a message naming the variable, so a
typo in a deployment fails loudly instead of running with a silent default.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from urllib.parse import urlsplit

from certbroker.limits import MAX_PERIOD, Bucket, Limits

LETS_ENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
#: Every CERTBROKER_* variable anything here reads (broker, CLI, health check); the rest
#: are typos, warned about at start (tests/test_config_startup.py keeps this list complete).
_KNOWN = (
    "ACME_CA_BUNDLE",
    "ACME_DIRECTORY",
    "ACME_EMAIL",
    "ACME_WORKERS",
    "ADDR",
    "ALLOW_PLAINTEXT",
    "BROKER_ID",
    "CAA_IDENTITY",
    "CLIENT_CA",
    "CLIENT_CERT",
    "CLIENT_KEY",
    "COMPACTION_INTERVAL",
    "DB",
    "DNS01_SERVER",
    "DNS01_TSIG_KEY",
    "DNS01_ZONE",
    "DNS_CHECK_INTERVAL",
    "DNS_SERVERS",
    "DOCTOR_HTTP_PORT",
    "DOCTOR_INTERVAL",
    "DOCTOR_TIMEOUT",
    "EVENT_RETENTION",
    "FORCED_RETRY_INTERVAL",
    "HEALTH_LISTEN",
    "HEARTBEAT_INTERVAL",
    "HTTP01_HEADER_TIMEOUT",
    "HTTP01_IDLE_TIMEOUT",
    "HTTP01_LISTEN",
    "HTTP01_MAX_CONNECTIONS",
    "HTTP01_MAX_CONNECTIONS_PER_PEER",
    "KEK_FILE",
    "KEY_RETENTION",
    "LEASE",
    "LISTEN",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "LOG_LEVEL_LIBRARIES",
    "BAD_REQUESTS_PER_PEER",
    "MAX_CONCURRENT_ORDERS",
    "MAX_INFLIGHT_PER_PEER",
    "MAX_PENDING_REQUESTS",
    "MAX_ROUTERS",
    "MAX_ROUTERS_PER_IDENTITY",
    "METRICS_LISTEN",
    "PLATFORM_DOMAINS",
    "PLATFORM_TARGETS",
    "PLATFORM_ZONE",
    "QUOTA_ACCOUNT_ORDERS",
    "QUOTA_FAILED_AUTHORIZATIONS",
    "QUOTA_PER_NAME_SET",
    "QUOTA_PER_REGISTERED_DOMAIN",
    "ROLES",
    "ROUTER_ID_IS_IDENTITY",
    "ROUTER_REPORT_INTERVAL",
    "TLS_CERT",
    "TLS_CLIENT_CA",
    "TLS_KEY",
    "TRACES_EXPORTER",
    "TRUST_BUNDLE",
    "WATCH_BUFFER",
    "WATCH_SEND_TIMEOUT",
)
KNOWN_VARIABLES = frozenset(f"CERTBROKER_{name}" for name in _KNOWN)
ROLES = ("router", "api", "admin")
_PER_PEER_PERIOD = timedelta(seconds=10)  # what a plain count in BAD_REQUESTS_PER_PEER means
# 100 at once, then 10 a second, of calls no data makes right (api/fairness.py: tenants' typos do
# not count).
BAD_REQUESTS_PER_PEER = Bucket(100, _PER_PEER_PERIOD)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_MAX_DURATION = timedelta(days=3650)
_ZONE_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_ZONE = re.compile(rf"{_ZONE_LABEL}(?:\.{_ZONE_LABEL})+")
_BROKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")


class ConfigError(ValueError):
    """A bad environment value; the message names the variable."""


def _dns01(get: Callable[[str], str | None]) -> dict[str, object]:
    """CERTBROKER_DNS01_ZONE, _SERVER (host[:port], default 53) and _TSIG_KEY.

    The server and key serve two users: delegated DNS-01 (wildcards of apps,
    with the zone) and the platform's own domains (CERTBROKER_PLATFORM_DOMAINS,
    written in the platform's zone). Either one needs both; delegation needs
    the zone too. The key file holds BIND's ``key "name" { algorithm
    hmac-sha256; secret "..."; };`` (what ``tsig-keygen name`` prints) or one
    line ``name:algorithm:secret``; it is parsed here so a bad key stops the
    start, not the first wildcard order.
    """
    from certbroker.acme.dns01 import TsigKey

    names = ("CERTBROKER_DNS01_ZONE", "CERTBROKER_DNS01_SERVER", "CERTBROKER_DNS01_TSIG_KEY")
    zone, server, key = (get(n) for n in names)
    platform = get("CERTBROKER_PLATFORM_DOMAINS") is not None
    if zone is None and server is None and key is None:
        return {}
    if server is None or key is None or (zone is None and not platform):
        if platform and zone is None:
            raise ConfigError(
                "CERTBROKER_PLATFORM_DOMAINS needs both CERTBROKER_DNS01_SERVER and "
                "CERTBROKER_DNS01_TSIG_KEY (the platform's zone is updated by RFC 2136)"
            )
        raise ConfigError(f"{', '.join(names)} must be set together (DNS-01 by delegation)")
    values: dict[str, object] = {}
    if zone is not None:
        zone = zone.strip().rstrip(".").lower()
        if not _ZONE.fullmatch(zone):
            raise ConfigError(
                f"CERTBROKER_DNS01_ZONE={zone!r}: expected a zone like acme.example.net"
            )
        values["dns01_zone"] = zone
    path = key.strip()
    if not os.path.isfile(path):
        raise ConfigError(f"CERTBROKER_DNS01_TSIG_KEY={path!r}: no such file")
    try:
        TsigKey.load(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"CERTBROKER_DNS01_TSIG_KEY={path!r}: {error}") from None
    values["dns01_server"] = parse_hostport("CERTBROKER_DNS01_SERVER", server, 53)
    values["dns01_tsig_key"] = path
    return values


#: More platform domains than this is a mistake (a pasted list of app names?), not a platform.
MAX_PLATFORM_DOMAINS = 100


def _platform(get: Callable[[str], str | None]) -> dict[str, object]:
    """CERTBROKER_PLATFORM_DOMAINS (wildcards) and CERTBROKER_PLATFORM_ZONE (optional).

    Each entry is a wildcard one label above the apps, ``*.osc-fr1.example.io``,
    normalised like any domain but allowed on the public suffix list (see
    ``certbroker.platform``). The zone, when given, must hold every entry's
    ``_acme-challenge`` name; unset, each entry's zone is its base
    (``osc-fr1.example.io``).
    """
    from certbroker.errors import InvalidArgument
    from certbroker.names import normalise_name

    raw, raw_zone = get("CERTBROKER_PLATFORM_DOMAINS"), get("CERTBROKER_PLATFORM_ZONE")
    if raw is None:
        if raw_zone is not None:
            raise ConfigError("CERTBROKER_PLATFORM_ZONE needs CERTBROKER_PLATFORM_DOMAINS")
        return {}
    if get("CERTBROKER_DNS01_SERVER") is None or get("CERTBROKER_DNS01_TSIG_KEY") is None:
        raise ConfigError(
            "CERTBROKER_PLATFORM_DOMAINS needs both CERTBROKER_DNS01_SERVER and "
            "CERTBROKER_DNS01_TSIG_KEY (the platform's zone is updated by RFC 2136)"
        )
    items = _list(raw)
    if len(items) > MAX_PLATFORM_DOMAINS:
        raise ConfigError(
            f"CERTBROKER_PLATFORM_DOMAINS: {len(items)} names, over {MAX_PLATFORM_DOMAINS}"
        )
    domains: list[str] = []
    for item in items:
        try:
            name = normalise_name(item, "CERTBROKER_PLATFORM_DOMAINS")
        except InvalidArgument as error:
            raise ConfigError(f"CERTBROKER_PLATFORM_DOMAINS: {item[:80]!r}: {error}") from None
        base = name.removeprefix("*.")
        if not name.startswith("*.") or len(base.split(".")) < 2:
            raise ConfigError(
                f"CERTBROKER_PLATFORM_DOMAINS: {item[:80]!r}: expected a wildcard with at "
                "least two labels after it, like *.osc-fr1.example.io"
            )
        if name not in domains:
            domains.append(name)
    values: dict[str, object] = {"platform_domains": tuple(domains)}
    if raw_zone is not None:
        zone = raw_zone.strip().rstrip(".").lower()
        if not _ZONE.fullmatch(zone):
            raise ConfigError(
                f"CERTBROKER_PLATFORM_ZONE={raw_zone!r}: expected a zone like example.io"
            )
        for name in domains:
            base = name.removeprefix("*.")
            if base != zone and not base.endswith("." + zone):
                raise ConfigError(
                    f"CERTBROKER_PLATFORM_ZONE={zone!r}: {name} is not in that zone (its "
                    f"_acme-challenge.{base} must be); leave it unset for one zone per domain"
                )
        values["platform_zone"] = zone
    return values


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One warning per ``CERTBROKER_*`` name nothing reads, with the closest known name.

    A typo (LISTNE for LISTEN) would otherwise leave the default in force
    silently. A warning, not a refusal: newer deployments may set variables an
    older broker does not know.
    """
    warnings = []
    for name in sorted(env):
        if not name.startswith("CERTBROKER_") or name in KNOWN_VARIABLES:
            continue
        # Compared without the shared prefix, which would make every name look close.
        close = difflib.get_close_matches(name.removeprefix("CERTBROKER_"), _KNOWN, n=1)
        hint = f"; did you mean CERTBROKER_{close[0]}?" if close else ""
        warnings.append(f"unknown variable {name} is ignored{hint}")
    return warnings


def _acme_directory(raw: str) -> str:
    """An https URL (ACME requires HTTPS, RFC 8555 section 6.1), or ``off``: no CA."""
    text = raw.strip()
    if text == "off":
        return ""
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        url = urlsplit("")
    if url.scheme != "https" or not url.hostname:
        raise ConfigError(
            f"CERTBROKER_ACME_DIRECTORY={raw!r}: expected an https:// URL such as "
            f"{LETS_ENCRYPT_STAGING} (staging), or off"
        )
    return text


def _duration(name: str, raw: str) -> timedelta:
    match = _DURATION.match(raw.strip())
    if not match:
        raise ConfigError(f"{name}={raw!r}: expected a duration like 60s, 15m, 7d or plain seconds")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > _MAX_DURATION.total_seconds():
        # Beyond any use, and ``now - value`` (key retention) or ``then + value`` (the
        # forced-retry interval) would overflow at run time, not here.
        raise ConfigError(f"{name}={raw!r}: must be at most {_MAX_DURATION.days}d")
    value = timedelta(seconds=seconds)
    if value <= timedelta(0):
        raise ConfigError(f"{name}={raw!r}: must be longer than zero")
    return value


_BUCKET = re.compile(r"^(\d+)(?:/(\S+))?$")


def _bucket(name: str, raw: str, default_period: timedelta) -> Bucket:
    """``N/DURATION`` (``300/3h``: 300 tokens, refilled over 3 hours, one per 36 s), or a
    plain ``N``: N per the variable's default period (what the older integer meant)."""
    match = _BUCKET.match(raw.replace(" ", ""))
    if not match:
        raise ConfigError(f"{name}={raw!r}: expected COUNT/PERIOD like 50/7d, or a count")
    capacity = _int(name, match.group(1), 1)
    period = _duration(name, match.group(2)) if match.group(2) else default_period
    if period > MAX_PERIOD:
        raise ConfigError(f"{name}={raw!r}: the period may be at most {MAX_PERIOD.days}d")
    return Bucket(capacity, period)


def _int(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def parse_hostport(name: str, raw: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or (with a default port) a bare host."""
    text = raw.strip()
    match = re.match(r"^\[([0-9a-fA-F:.]+)\](?::(\d+))?$", text) or re.match(
        r"^([^:\[\]]+)(?::(\d+))?$", text
    )
    if not match or (match.group(2) is None and default_port is None):
        raise ConfigError(f"{name}={raw!r}: expected host:port")
    port = int(match.group(2)) if match.group(2) is not None else default_port
    assert port is not None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}={raw!r}: port out of range")
    return match.group(1), port


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``; a wildcard (0.0.0.0, ::) or any other name is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _transport(s: Settings) -> None:
    """No plaintext by accident: a plaintext listener off loopback is an explicit choice.

    Roles come from client certificates, so roles without TLS would be silently
    ignored and every caller could manage domains; that is refused too.
    """
    tls = "set CERTBROKER_TLS_CERT/_KEY/_CLIENT_CA"
    if s.roles and not s.tls_enabled:
        raise ConfigError(f"CERTBROKER_ROLES needs TLS (roles are client certificate names): {tls}")
    if s.router_id_is_identity and not s.tls_enabled:
        raise ConfigError(
            f"CERTBROKER_ROUTER_ID_IS_IDENTITY needs TLS (ids are client certificate names): {tls}"
        )
    host = parse_hostport("CERTBROKER_LISTEN", s.listen)[0]
    if not s.tls_enabled and not s.allow_plaintext and not is_loopback(host):
        raise ConfigError(
            f"CERTBROKER_LISTEN={s.listen!r} is not loopback and TLS is off: "
            f"{tls} or CERTBROKER_ALLOW_PLAINTEXT=1"
        )
    if s.health_listen and not s.allow_plaintext and not is_loopback(s.health_listen[0]):
        raise ConfigError(
            f"CERTBROKER_HEALTH_LISTEN={s.health_listen[0]!r} is not loopback (the health "
            "listener is plaintext): use 127.0.0.1:PORT, off, or CERTBROKER_ALLOW_PLAINTEXT=1"
        )
    if s.metrics_listen and not s.allow_plaintext and not is_loopback(s.metrics_listen[0]):
        raise ConfigError(
            f"CERTBROKER_METRICS_LISTEN={s.metrics_listen[0]!r} is not loopback (metrics are "
            "plaintext and name every domain and app): use 127.0.0.1:PORT, off, or "
            "CERTBROKER_ALLOW_PLAINTEXT=1"
        )


def _db(name: str, raw: str) -> str:
    """A file path, ``sqlite:PATH`` or ``postgresql://…`` (``certbroker.store.factory``)."""
    from certbroker.store.factory import parse, redact

    try:
        parse(raw)
    except ValueError as error:
        raise ConfigError(f"{name}={redact(raw.strip())!r}: {error}") from None
    return raw.strip()


def _list(raw: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", raw.strip()) if item]


def _roles(name: str, raw: str) -> dict[str, str]:
    """``router-1=router,api.internal=api``: client-certificate name → role."""
    roles: dict[str, str] = {}
    for item in _list(raw):
        identity, sep, role = item.partition("=")
        if not sep or not identity or role not in ROLES:
            raise ConfigError(
                f"{name}: {item!r} must be NAME=ROLE with ROLE one of {', '.join(ROLES)}"
            )
        roles[identity] = role
    return roles


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    db: str = "./var/certbroker.sqlite3"
    acme_directory: str = LETS_ENCRYPT_PRODUCTION
    acme_ca_bundle: str | None = None
    acme_email: str | None = None
    dns_servers: tuple[tuple[str, int], ...] | None = None
    platform_targets: tuple[str, ...] = ()
    http01_listen: tuple[str, int] | None = ("127.0.0.1", 8402)
    http01_max_connections: int = 1024
    http01_max_connections_per_peer: int = 64
    http01_header_timeout: timedelta = timedelta(seconds=10)
    http01_idle_timeout: timedelta = timedelta(seconds=30)
    # Plaintext grpc.health.v1 only, for probes inside the host/container; None: off.
    health_listen: tuple[str, int] | None = ("127.0.0.1", 50052)
    allow_plaintext: bool = False
    trust_bundle: str | None = None
    kek_file: str = "./var/certbroker.kek"
    caa_identity: str = "letsencrypt.org"
    dns_check_interval: timedelta = timedelta(seconds=60)
    # A failing domain may be forced ("retry now") once per this; Let's Encrypt refills
    # one failed authorization per name every 12 minutes.
    forced_retry_interval: timedelta = timedelta(minutes=10)
    # DNS-01 through a one-time delegation (wildcards): the broker's own zone, its
    # primary (RFC 2136 updates go there) and the TSIG key file; all three or none.
    dns01_zone: str | None = None
    dns01_server: tuple[str, int] | None = None
    dns01_tsig_key: str | None = None
    # The platform's own ``*.region`` wildcards (certbroker.platform), issued over DNS-01
    # in the platform's zone with the DNS-01 server and key above; the zone of each is
    # platform_zone, or its base when that is None.
    platform_domains: tuple[str, ...] = ()
    platform_zone: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    roles: Mapping[str, str] = field(default_factory=dict)
    event_retention: timedelta = timedelta(days=7)
    key_retention: timedelta = timedelta(days=7)  # retired certificates' keys, then erased
    heartbeat_interval: timedelta = timedelta(seconds=15)
    watch_buffer: int = 1024
    watch_send_timeout: timedelta = timedelta(seconds=30)
    compaction_interval: timedelta = timedelta(hours=1)
    acme_workers: int = 16
    max_concurrent_orders: int = 32
    # The CA's rate limits, mirrored (certbroker.limits); Let's Encrypt's by default.
    quota_account_orders: Bucket = Limits.account_orders
    quota_per_registered_domain: Bucket = Limits.registered_domain
    quota_per_name_set: Bucket = Limits.name_set
    quota_failed_authorizations: Bucket = Limits.failed_authorizations
    traces_exporter: str = "none"
    log_level: str = "INFO"
    # Telemetry (certbroker.metrics, certbroker.logs): a Prometheus scrape address
    # (None: off), "text" or "json" log lines, and the level of every non-certbroker logger.
    metrics_listen: tuple[str, int] | None = None
    log_format: str = "text"
    log_level_libraries: str = "WARNING"
    max_pending_requests: int = 20000
    # Per caller (mTLS identity, else connection; certbroker.api.fairness): unary calls
    # at once (0: no cap), and the budget of requests it gets wrong (None: no budget).
    max_inflight_per_peer: int = 100
    bad_requests_per_peer: Bucket | None = BAD_REQUESTS_PER_PEER
    # Routers report what they serve this often; silent for 3 intervals they stop counting.
    router_report_interval: timedelta = timedelta(seconds=10)
    max_routers: int = 10_000
    # Router ids one client certificate may hold; None: half of max_routers.
    max_routers_per_identity: int | None = None
    # Stricter: a router may report only under its own client-certificate name (needs TLS).
    router_id_is_identity: bool = False
    # `certbroker doctor` (CheckDomain): the port its HTTP-01 self-probe connects to (the
    # routers' port 80 in production), its deadline, and one run per domain per interval.
    doctor_http_port: int = 80
    doctor_timeout: timedelta = timedelta(seconds=10)
    doctor_interval: timedelta = timedelta(seconds=10)
    # Several brokers on one database: a broker holds each domain it works for this long
    # and renews it every third of it; a dead broker's domains are taken over after it.
    lease: timedelta = timedelta(seconds=30)
    # This broker's name in leases and shared challenge answers; "" = hostname-pid-random
    # (``broker_id()``), unique per process.
    broker_id: str = ""

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def limits(self) -> Limits:
        return Limits(
            account_orders=self.quota_account_orders,
            registered_domain=self.quota_per_registered_domain,
            name_set=self.quota_per_name_set,
            failed_authorizations=self.quota_failed_authorizations,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``CERTBROKER_*``; unset or empty variables keep their defaults."""
        source = os.environ if env is None else env
        defaults = cls()

        def get(name: str) -> str | None:
            value = source.get(name)
            return value if value is not None and value.strip() != "" else None

        values: dict[str, object] = {}
        if (raw := get("CERTBROKER_LISTEN")) is not None:
            parse_hostport("CERTBROKER_LISTEN", raw)
            values["listen"] = raw.strip()
        if (raw := get("CERTBROKER_ACME_DIRECTORY")) is not None:
            values["acme_directory"] = _acme_directory(raw)
        if (raw := get("CERTBROKER_DB")) is not None:
            values["db"] = _db("CERTBROKER_DB", raw)
        for attr, name in (
            ("acme_ca_bundle", "CERTBROKER_ACME_CA_BUNDLE"),
            ("acme_email", "CERTBROKER_ACME_EMAIL"),
            ("trust_bundle", "CERTBROKER_TRUST_BUNDLE"),
            ("kek_file", "CERTBROKER_KEK_FILE"),
            ("caa_identity", "CERTBROKER_CAA_IDENTITY"),
            ("tls_cert", "CERTBROKER_TLS_CERT"),
            ("tls_key", "CERTBROKER_TLS_KEY"),
            ("tls_client_ca", "CERTBROKER_TLS_CLIENT_CA"),
        ):
            if (raw := get(name)) is not None:
                values[attr] = raw.strip()
        for attr, name in (
            ("acme_ca_bundle", "CERTBROKER_ACME_CA_BUNDLE"),
            ("trust_bundle", "CERTBROKER_TRUST_BUNDLE"),
            ("tls_cert", "CERTBROKER_TLS_CERT"),
            ("tls_key", "CERTBROKER_TLS_KEY"),
            ("tls_client_ca", "CERTBROKER_TLS_CLIENT_CA"),
        ):
            path = values.get(attr)
            if isinstance(path, str) and not os.path.isfile(path):
                raise ConfigError(f"{name}={path!r}: no such file")
        if (raw := get("CERTBROKER_DNS_SERVERS")) is not None:
            values["dns_servers"] = tuple(
                parse_hostport("CERTBROKER_DNS_SERVERS", item, 53) for item in _list(raw)
            )
        if (raw := get("CERTBROKER_PLATFORM_TARGETS")) is not None:
            values["platform_targets"] = tuple(_list(raw))
        for attr, name in (
            ("http01_listen", "CERTBROKER_HTTP01_LISTEN"),
            ("health_listen", "CERTBROKER_HEALTH_LISTEN"),
            ("metrics_listen", "CERTBROKER_METRICS_LISTEN"),
        ):
            if (raw := get(name)) is not None:
                values[attr] = None if raw.strip() == "off" else parse_hostport(name, raw)
        if (raw := get("CERTBROKER_ALLOW_PLAINTEXT")) is not None:
            if raw.strip().lower() not in ("0", "1", "true", "false", "yes", "no"):
                raise ConfigError(f"CERTBROKER_ALLOW_PLAINTEXT={raw!r}: expected 1 or 0")
            values["allow_plaintext"] = raw.strip().lower() in ("1", "true", "yes")
        if (raw := get("CERTBROKER_ROUTER_ID_IS_IDENTITY")) is not None:
            if raw.strip().lower() not in ("0", "1", "true", "false", "yes", "no"):
                raise ConfigError(f"CERTBROKER_ROUTER_ID_IS_IDENTITY={raw!r}: expected 1 or 0")
            values["router_id_is_identity"] = raw.strip().lower() in ("1", "true", "yes")
        for attr, name in (
            ("dns_check_interval", "CERTBROKER_DNS_CHECK_INTERVAL"),
            ("forced_retry_interval", "CERTBROKER_FORCED_RETRY_INTERVAL"),
            ("event_retention", "CERTBROKER_EVENT_RETENTION"),
            ("key_retention", "CERTBROKER_KEY_RETENTION"),
            ("heartbeat_interval", "CERTBROKER_HEARTBEAT_INTERVAL"),
            ("watch_send_timeout", "CERTBROKER_WATCH_SEND_TIMEOUT"),
            ("compaction_interval", "CERTBROKER_COMPACTION_INTERVAL"),
            ("http01_header_timeout", "CERTBROKER_HTTP01_HEADER_TIMEOUT"),
            ("http01_idle_timeout", "CERTBROKER_HTTP01_IDLE_TIMEOUT"),
            ("router_report_interval", "CERTBROKER_ROUTER_REPORT_INTERVAL"),
            ("doctor_timeout", "CERTBROKER_DOCTOR_TIMEOUT"),
            ("doctor_interval", "CERTBROKER_DOCTOR_INTERVAL"),
            ("lease", "CERTBROKER_LEASE"),
        ):
            if (raw := get(name)) is not None:
                values[attr] = _duration(name, raw)
        for attr, name, minimum in (
            ("watch_buffer", "CERTBROKER_WATCH_BUFFER", 1),
            ("acme_workers", "CERTBROKER_ACME_WORKERS", 1),
            ("max_concurrent_orders", "CERTBROKER_MAX_CONCURRENT_ORDERS", 1),
            ("max_pending_requests", "CERTBROKER_MAX_PENDING_REQUESTS", 1),
            ("http01_max_connections", "CERTBROKER_HTTP01_MAX_CONNECTIONS", 1),
            ("http01_max_connections_per_peer", "CERTBROKER_HTTP01_MAX_CONNECTIONS_PER_PEER", 1),
            ("max_routers", "CERTBROKER_MAX_ROUTERS", 1),
            ("max_routers_per_identity", "CERTBROKER_MAX_ROUTERS_PER_IDENTITY", 1),
            ("max_inflight_per_peer", "CERTBROKER_MAX_INFLIGHT_PER_PEER", 0),
        ):
            if (raw := get(name)) is not None:
                values[attr] = _int(name, raw, minimum)
        if (raw := get("CERTBROKER_DOCTOR_HTTP_PORT")) is not None:
            port = _int("CERTBROKER_DOCTOR_HTTP_PORT", raw, 1)
            if port > 65535:
                raise ConfigError(f"CERTBROKER_DOCTOR_HTTP_PORT={raw!r}: port out of range")
            values["doctor_http_port"] = port
        for attr, name in (
            ("quota_account_orders", "CERTBROKER_QUOTA_ACCOUNT_ORDERS"),
            ("quota_per_registered_domain", "CERTBROKER_QUOTA_PER_REGISTERED_DOMAIN"),
            ("quota_per_name_set", "CERTBROKER_QUOTA_PER_NAME_SET"),
            ("quota_failed_authorizations", "CERTBROKER_QUOTA_FAILED_AUTHORIZATIONS"),
        ):
            if (raw := get(name)) is not None:
                values[attr] = _bucket(name, raw, getattr(defaults, attr).period)
        if (raw := get("CERTBROKER_BAD_REQUESTS_PER_PEER")) is not None:
            name = "CERTBROKER_BAD_REQUESTS_PER_PEER"
            off = raw.strip().lower() in ("0", "off")
            values["bad_requests_per_peer"] = None if off else _bucket(name, raw, _PER_PEER_PERIOD)
        if (raw := get("CERTBROKER_BROKER_ID")) is not None:
            if not _BROKER_ID.fullmatch(raw.strip()):
                raise ConfigError(
                    f"CERTBROKER_BROKER_ID={raw!r}: expected up to 100 letters, digits and "
                    "._:@- (starting with a letter or digit), unique per running broker"
                )
            values["broker_id"] = raw.strip()
        if (raw := get("CERTBROKER_ROLES")) is not None:
            values["roles"] = _roles("CERTBROKER_ROLES", raw)
        if (raw := get("CERTBROKER_TRACES_EXPORTER")) is not None:
            if raw not in ("none", "console", "otlp"):
                raise ConfigError(
                    f"CERTBROKER_TRACES_EXPORTER={raw!r}: expected none, console or otlp"
                )
            values["traces_exporter"] = raw
        for attr, name in (
            ("log_level", "CERTBROKER_LOG_LEVEL"),
            ("log_level_libraries", "CERTBROKER_LOG_LEVEL_LIBRARIES"),
        ):
            if (raw := get(name)) is not None:
                if raw.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                    raise ConfigError(f"{name}={raw!r}: expected DEBUG, INFO, WARNING or ERROR")
                values[attr] = raw.upper()
        if (raw := get("CERTBROKER_LOG_FORMAT")) is not None:
            if raw.strip().lower() not in ("text", "json"):
                raise ConfigError(f"CERTBROKER_LOG_FORMAT={raw!r}: expected text or json")
            values["log_format"] = raw.strip().lower()
        values.update(_dns01(get))
        values.update(_platform(get))
        settings = replace(defaults, **values)  # type: ignore[arg-type]
        tls = (settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        if any(tls) and not all(tls):
            raise ConfigError(
                "CERTBROKER_TLS_CERT, CERTBROKER_TLS_KEY and CERTBROKER_TLS_CLIENT_CA "
                "must be set together (mTLS with required client certificates)"
            )
        if settings.tls_cert and settings.tls_key and settings.tls_client_ca:
            from certbroker.x509.files import PemFileError, check_server_tls

            try:
                check_server_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            except PemFileError as error:
                raise ConfigError(str(error)) from None
        if settings.lease < timedelta(seconds=3):
            raise ConfigError(
                f"CERTBROKER_LEASE={get('CERTBROKER_LEASE')!r}: must be at least 3s "
                "(it is renewed every third of it)"
            )
        _transport(settings)
        return settings


def broker_id(settings: Settings) -> str:
    """``CERTBROKER_BROKER_ID``, or ``hostname-pid-random``: never the same for two processes.

    The random part keeps a restarted process (same host, a recycled pid) from
    taking its predecessor's leases for its own.
    """
    if settings.broker_id:
        return settings.broker_id
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:60] or "broker"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
