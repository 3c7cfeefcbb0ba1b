import datetime

from certbroker.v1 import domain_pb2 as _domain_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_SNAPSHOT: _ClassVar[EventType]
    EVENT_TYPE_SNAPSHOT_COMPLETE: _ClassVar[EventType]
    EVENT_TYPE_DOMAIN_UPDATED: _ClassVar[EventType]
    EVENT_TYPE_DOMAIN_REMOVED: _ClassVar[EventType]
    EVENT_TYPE_CHALLENGE_ADDED: _ClassVar[EventType]
    EVENT_TYPE_CHALLENGE_REMOVED: _ClassVar[EventType]

class CheckVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECK_VERDICT_UNSPECIFIED: _ClassVar[CheckVerdict]
    CHECK_VERDICT_OK: _ClassVar[CheckVerdict]
    CHECK_VERDICT_WARN: _ClassVar[CheckVerdict]
    CHECK_VERDICT_FAIL: _ClassVar[CheckVerdict]
    CHECK_VERDICT_SKIPPED: _ClassVar[CheckVerdict]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_SNAPSHOT: EventType
EVENT_TYPE_SNAPSHOT_COMPLETE: EventType
EVENT_TYPE_DOMAIN_UPDATED: EventType
EVENT_TYPE_DOMAIN_REMOVED: EventType
EVENT_TYPE_CHALLENGE_ADDED: EventType
EVENT_TYPE_CHALLENGE_REMOVED: EventType
CHECK_VERDICT_UNSPECIFIED: CheckVerdict
CHECK_VERDICT_OK: CheckVerdict
CHECK_VERDICT_WARN: CheckVerdict
CHECK_VERDICT_FAIL: CheckVerdict
CHECK_VERDICT_SKIPPED: CheckVerdict

class IssueCertificateRequest(_message.Message):
    __slots__ = ("domain", "app", "disable_letsencrypt", "key_algorithm", "challenge_type", "include_apex", "renew")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    DISABLE_LETSENCRYPT_FIELD_NUMBER: _ClassVar[int]
    KEY_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_APEX_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    domain: str
    app: str
    disable_letsencrypt: bool
    key_algorithm: _domain_pb2.KeyAlgorithm
    challenge_type: _domain_pb2.ChallengeType
    include_apex: bool
    renew: bool
    def __init__(self, domain: _Optional[str] = ..., app: _Optional[str] = ..., disable_letsencrypt: _Optional[bool] = ..., key_algorithm: _Optional[_Union[_domain_pb2.KeyAlgorithm, str]] = ..., challenge_type: _Optional[_Union[_domain_pb2.ChallengeType, str]] = ..., include_apex: _Optional[bool] = ..., renew: _Optional[bool] = ...) -> None: ...

class IssueCertificateResponse(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: _domain_pb2.Domain
    def __init__(self, domain: _Optional[_Union[_domain_pb2.Domain, _Mapping]] = ...) -> None: ...

class UploadCustomRequest(_message.Message):
    __slots__ = ("domain", "certificate", "private_key", "app")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    domain: str
    certificate: bytes
    private_key: bytes
    app: str
    def __init__(self, domain: _Optional[str] = ..., certificate: _Optional[bytes] = ..., private_key: _Optional[bytes] = ..., app: _Optional[str] = ...) -> None: ...

class UploadCustomResponse(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: _domain_pb2.Domain
    def __init__(self, domain: _Optional[_Union[_domain_pb2.Domain, _Mapping]] = ...) -> None: ...

class DeleteCustomRequest(_message.Message):
    __slots__ = ("domain", "app")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    domain: str
    app: str
    def __init__(self, domain: _Optional[str] = ..., app: _Optional[str] = ...) -> None: ...

class DeleteCustomResponse(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: _domain_pb2.Domain
    def __init__(self, domain: _Optional[_Union[_domain_pb2.Domain, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("domain", "app")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    domain: str
    app: str
    def __init__(self, domain: _Optional[str] = ..., app: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: _domain_pb2.Domain
    def __init__(self, domain: _Optional[_Union[_domain_pb2.Domain, _Mapping]] = ...) -> None: ...

class RemoveDomainRequest(_message.Message):
    __slots__ = ("domain", "app")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    domain: str
    app: str
    def __init__(self, domain: _Optional[str] = ..., app: _Optional[str] = ...) -> None: ...

class RemoveDomainResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class ListDomainsRequest(_message.Message):
    __slots__ = ("app", "page_size", "page_token")
    APP_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    app: str
    page_size: int
    page_token: str
    def __init__(self, app: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDomainsResponse(_message.Message):
    __slots__ = ("domains", "next_page_token")
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    domains: _containers.RepeatedCompositeFieldContainer[_domain_pb2.Domain]
    next_page_token: str
    def __init__(self, domains: _Optional[_Iterable[_Union[_domain_pb2.Domain, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchStatusRequest(_message.Message):
    __slots__ = ("after_revision", "include_keys", "apps", "domains", "include_challenges", "batch_snapshot")
    AFTER_REVISION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_KEYS_FIELD_NUMBER: _ClassVar[int]
    APPS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CHALLENGES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    after_revision: int
    include_keys: bool
    apps: _containers.RepeatedScalarFieldContainer[str]
    domains: _containers.RepeatedScalarFieldContainer[str]
    include_challenges: bool
    batch_snapshot: bool
    def __init__(self, after_revision: _Optional[int] = ..., include_keys: _Optional[bool] = ..., apps: _Optional[_Iterable[str]] = ..., domains: _Optional[_Iterable[str]] = ..., include_challenges: _Optional[bool] = ..., batch_snapshot: _Optional[bool] = ...) -> None: ...

class ServingMaterial(_message.Message):
    __slots__ = ("source", "chain_pem", "private_key_pem")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    source: _domain_pb2.CertificateSource
    chain_pem: str
    private_key_pem: str
    def __init__(self, source: _Optional[_Union[_domain_pb2.CertificateSource, str]] = ..., chain_pem: _Optional[str] = ..., private_key_pem: _Optional[str] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("token", "key_authorization")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    token: str
    key_authorization: str
    def __init__(self, token: _Optional[str] = ..., key_authorization: _Optional[str] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("revision", "type", "domain", "serving", "challenge")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    type: EventType
    domain: _domain_pb2.Domain
    serving: ServingMaterial
    challenge: Challenge
    def __init__(self, revision: _Optional[int] = ..., type: _Optional[_Union[EventType, str]] = ..., domain: _Optional[_Union[_domain_pb2.Domain, _Mapping]] = ..., serving: _Optional[_Union[ServingMaterial, _Mapping]] = ..., challenge: _Optional[_Union[Challenge, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class WatchEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[WatchEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[WatchEvent, _Mapping]]] = ...) -> None: ...

class WatchStatusResponse(_message.Message):
    __slots__ = ("event", "heartbeat", "snapshot_batch")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_BATCH_FIELD_NUMBER: _ClassVar[int]
    event: WatchEvent
    heartbeat: Heartbeat
    snapshot_batch: WatchEventBatch
    def __init__(self, event: _Optional[_Union[WatchEvent, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., snapshot_batch: _Optional[_Union[WatchEventBatch, _Mapping]] = ...) -> None: ...

class ReportServingRequest(_message.Message):
    __slots__ = ("router_id", "applied_revision", "domain_count")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_REVISION_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    applied_revision: int
    domain_count: int
    def __init__(self, router_id: _Optional[str] = ..., applied_revision: _Optional[int] = ..., domain_count: _Optional[int] = ...) -> None: ...

class ReportServingResponse(_message.Message):
    __slots__ = ("current_revision", "report_interval")
    CURRENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    current_revision: int
    report_interval: _duration_pb2.Duration
    def __init__(self, current_revision: _Optional[int] = ..., report_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ListRoutersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RouterStatus(_message.Message):
    __slots__ = ("router_id", "identity", "applied_revision", "lag", "domain_count", "first_seen_time", "last_seen_time", "live")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    APPLIED_REVISION_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_TIME_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    identity: str
    applied_revision: int
    lag: int
    domain_count: int
    first_seen_time: _timestamp_pb2.Timestamp
    last_seen_time: _timestamp_pb2.Timestamp
    live: bool
    def __init__(self, router_id: _Optional[str] = ..., identity: _Optional[str] = ..., applied_revision: _Optional[int] = ..., lag: _Optional[int] = ..., domain_count: _Optional[int] = ..., first_seen_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., live: _Optional[bool] = ...) -> None: ...

class ListRoutersResponse(_message.Message):
    __slots__ = ("routers", "current_revision", "report_interval", "next_page_token")
    ROUTERS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    routers: _containers.RepeatedCompositeFieldContainer[RouterStatus]
    current_revision: int
    report_interval: _duration_pb2.Duration
    next_page_token: str
    def __init__(self, routers: _Optional[_Iterable[_Union[RouterStatus, _Mapping]]] = ..., current_revision: _Optional[int] = ..., report_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CheckDomainRequest(_message.Message):
    __slots__ = ("domain", "app")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    domain: str
    app: str
    def __init__(self, domain: _Optional[str] = ..., app: _Optional[str] = ...) -> None: ...

class DomainCheck(_message.Message):
    __slots__ = ("name", "verdict", "summary", "detail", "fix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    FIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    verdict: CheckVerdict
    summary: str
    detail: str
    fix: str
    def __init__(self, name: _Optional[str] = ..., verdict: _Optional[_Union[CheckVerdict, str]] = ..., summary: _Optional[str] = ..., detail: _Optional[str] = ..., fix: _Optional[str] = ...) -> None: ...

class CheckDomainResponse(_message.Message):
    __slots__ = ("domain", "checks", "would_issue_now", "known", "app", "next_action", "next_action_time", "check_time")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    WOULD_ISSUE_NOW_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    NEXT_ACTION_FIELD_NUMBER: _ClassVar[int]
    NEXT_ACTION_TIME_FIELD_NUMBER: _ClassVar[int]
    CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    domain: str
    checks: _containers.RepeatedCompositeFieldContainer[DomainCheck]
    would_issue_now: bool
    known: bool
    app: str
    next_action: str
    next_action_time: _timestamp_pb2.Timestamp
    check_time: _timestamp_pb2.Timestamp
    def __init__(self, domain: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[DomainCheck, _Mapping]]] = ..., would_issue_now: _Optional[bool] = ..., known: _Optional[bool] = ..., app: _Optional[str] = ..., next_action: _Optional[str] = ..., next_action_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
