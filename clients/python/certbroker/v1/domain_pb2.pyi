import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LetsEncryptState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LETS_ENCRYPT_STATE_UNSPECIFIED: _ClassVar[LetsEncryptState]
    LETS_ENCRYPT_STATE_PENDING_DNS: _ClassVar[LetsEncryptState]
    LETS_ENCRYPT_STATE_CREATING: _ClassVar[LetsEncryptState]
    LETS_ENCRYPT_STATE_IN_USE: _ClassVar[LetsEncryptState]
    LETS_ENCRYPT_STATE_NOT_USED: _ClassVar[LetsEncryptState]
    LETS_ENCRYPT_STATE_ACTION_REQUIRED: _ClassVar[LetsEncryptState]
    LETS_ENCRYPT_STATE_DISABLED: _ClassVar[LetsEncryptState]

class CertificateSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CERTIFICATE_SOURCE_UNSPECIFIED: _ClassVar[CertificateSource]
    CERTIFICATE_SOURCE_NONE: _ClassVar[CertificateSource]
    CERTIFICATE_SOURCE_LETS_ENCRYPT: _ClassVar[CertificateSource]
    CERTIFICATE_SOURCE_CUSTOM: _ClassVar[CertificateSource]

class KeyAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_ALGORITHM_UNSPECIFIED: _ClassVar[KeyAlgorithm]
    KEY_ALGORITHM_ECDSA_P256: _ClassVar[KeyAlgorithm]
    KEY_ALGORITHM_RSA_2048: _ClassVar[KeyAlgorithm]

class ChallengeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHALLENGE_TYPE_UNSPECIFIED: _ClassVar[ChallengeType]
    CHALLENGE_TYPE_HTTP_01: _ClassVar[ChallengeType]
    CHALLENGE_TYPE_DNS_01: _ClassVar[ChallengeType]
LETS_ENCRYPT_STATE_UNSPECIFIED: LetsEncryptState
LETS_ENCRYPT_STATE_PENDING_DNS: LetsEncryptState
LETS_ENCRYPT_STATE_CREATING: LetsEncryptState
LETS_ENCRYPT_STATE_IN_USE: LetsEncryptState
LETS_ENCRYPT_STATE_NOT_USED: LetsEncryptState
LETS_ENCRYPT_STATE_ACTION_REQUIRED: LetsEncryptState
LETS_ENCRYPT_STATE_DISABLED: LetsEncryptState
CERTIFICATE_SOURCE_UNSPECIFIED: CertificateSource
CERTIFICATE_SOURCE_NONE: CertificateSource
CERTIFICATE_SOURCE_LETS_ENCRYPT: CertificateSource
CERTIFICATE_SOURCE_CUSTOM: CertificateSource
KEY_ALGORITHM_UNSPECIFIED: KeyAlgorithm
KEY_ALGORITHM_ECDSA_P256: KeyAlgorithm
KEY_ALGORITHM_RSA_2048: KeyAlgorithm
CHALLENGE_TYPE_UNSPECIFIED: ChallengeType
CHALLENGE_TYPE_HTTP_01: ChallengeType
CHALLENGE_TYPE_DNS_01: ChallengeType

class CertificateInfo(_message.Message):
    __slots__ = ("sans", "subject", "issuer", "serial", "not_before", "not_after", "sha256_fingerprint", "chain_pem", "days_left", "key_algorithm")
    SANS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    DAYS_LEFT_FIELD_NUMBER: _ClassVar[int]
    KEY_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    sans: _containers.RepeatedScalarFieldContainer[str]
    subject: str
    issuer: str
    serial: str
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    sha256_fingerprint: str
    chain_pem: str
    days_left: int
    key_algorithm: str
    def __init__(self, sans: _Optional[_Iterable[str]] = ..., subject: _Optional[str] = ..., issuer: _Optional[str] = ..., serial: _Optional[str] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sha256_fingerprint: _Optional[str] = ..., chain_pem: _Optional[str] = ..., days_left: _Optional[int] = ..., key_algorithm: _Optional[str] = ...) -> None: ...

class RetryState(_message.Message):
    __slots__ = ("attempt", "next_attempt_time", "last_error_reason", "last_error_message", "last_error_time")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_TIME_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    next_attempt_time: _timestamp_pb2.Timestamp
    last_error_reason: str
    last_error_message: str
    last_error_time: _timestamp_pb2.Timestamp
    def __init__(self, attempt: _Optional[int] = ..., next_attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error_reason: _Optional[str] = ..., last_error_message: _Optional[str] = ..., last_error_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DnsObservation(_message.Message):
    __slots__ = ("answered", "expected", "points_to_platform", "check_time")
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    POINTS_TO_PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    answered: _containers.RepeatedScalarFieldContainer[str]
    expected: _containers.RepeatedScalarFieldContainer[str]
    points_to_platform: bool
    check_time: _timestamp_pb2.Timestamp
    def __init__(self, answered: _Optional[_Iterable[str]] = ..., expected: _Optional[_Iterable[str]] = ..., points_to_platform: _Optional[bool] = ..., check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Domain(_message.Message):
    __slots__ = ("domain", "app", "disable_letsencrypt", "lets_encrypt_state", "serving_source", "lets_encrypt_certificate", "custom_certificate", "retry", "dns", "revision", "create_time", "update_time", "next_check_time", "key_algorithm", "challenge_type", "action_required", "custom_certificate_expiring", "renewal_time", "include_apex", "serving_routers", "known_routers", "platform")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    DISABLE_LETSENCRYPT_FIELD_NUMBER: _ClassVar[int]
    LETS_ENCRYPT_STATE_FIELD_NUMBER: _ClassVar[int]
    SERVING_SOURCE_FIELD_NUMBER: _ClassVar[int]
    LETS_ENCRYPT_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_CERTIFICATE_EXPIRING_FIELD_NUMBER: _ClassVar[int]
    RENEWAL_TIME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_APEX_FIELD_NUMBER: _ClassVar[int]
    SERVING_ROUTERS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_ROUTERS_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    domain: str
    app: str
    disable_letsencrypt: bool
    lets_encrypt_state: LetsEncryptState
    serving_source: CertificateSource
    lets_encrypt_certificate: CertificateInfo
    custom_certificate: CertificateInfo
    retry: RetryState
    dns: DnsObservation
    revision: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    next_check_time: _timestamp_pb2.Timestamp
    key_algorithm: KeyAlgorithm
    challenge_type: ChallengeType
    action_required: str
    custom_certificate_expiring: bool
    renewal_time: _timestamp_pb2.Timestamp
    include_apex: bool
    serving_routers: int
    known_routers: int
    platform: bool
    def __init__(self, domain: _Optional[str] = ..., app: _Optional[str] = ..., disable_letsencrypt: _Optional[bool] = ..., lets_encrypt_state: _Optional[_Union[LetsEncryptState, str]] = ..., serving_source: _Optional[_Union[CertificateSource, str]] = ..., lets_encrypt_certificate: _Optional[_Union[CertificateInfo, _Mapping]] = ..., custom_certificate: _Optional[_Union[CertificateInfo, _Mapping]] = ..., retry: _Optional[_Union[RetryState, _Mapping]] = ..., dns: _Optional[_Union[DnsObservation, _Mapping]] = ..., revision: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_algorithm: _Optional[_Union[KeyAlgorithm, str]] = ..., challenge_type: _Optional[_Union[ChallengeType, str]] = ..., action_required: _Optional[str] = ..., custom_certificate_expiring: _Optional[bool] = ..., renewal_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., include_apex: _Optional[bool] = ..., serving_routers: _Optional[int] = ..., known_routers: _Optional[int] = ..., platform: _Optional[bool] = ...) -> None: ...
