-- Times are integer microseconds since the Unix epoch, UTC.

CREATE TABLE certificates (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    domain          TEXT    NOT NULL,
    source          TEXT    NOT NULL,          -- LETS_ENCRYPT | CUSTOM
    chain_pem       TEXT    NOT NULL,          -- leaf first, intermediates in signing order
    key_sealed      BLOB    NOT NULL,          -- AES-GCM under the KEK, domain as associated data
    sans_json       TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    issuer          TEXT    NOT NULL,
    serial          TEXT    NOT NULL,
    not_before      INTEGER NOT NULL,
    not_after       INTEGER NOT NULL,
    fingerprint     TEXT    NOT NULL,
    key_algorithm   TEXT    NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX certificates_domain ON certificates (domain);

CREATE TABLE domains (
    name                TEXT    PRIMARY KEY,
    app                 TEXT    NOT NULL,
    letsencrypt_enabled INTEGER NOT NULL,
    le_state            TEXT    NOT NULL,
    serving             TEXT    NOT NULL,
    key_algorithm       TEXT    NOT NULL,
    challenge           TEXT    NOT NULL,
    le_cert_id          INTEGER REFERENCES certificates (id),
    custom_cert_id      INTEGER REFERENCES certificates (id),
    attempt             INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER,
    last_error_reason   TEXT    NOT NULL DEFAULT '',
    last_error_message  TEXT    NOT NULL DEFAULT '',
    last_error_at       INTEGER,
    dns_json            TEXT,
    next_run_at         INTEGER,               -- when the scheduler next works the domain
    action_required     TEXT    NOT NULL DEFAULT '',
    custom_expiring     INTEGER NOT NULL DEFAULT 0,
    revision            INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
-- The scheduler asks only for due domains: idle ones cost nothing.
CREATE INDEX domains_due ON domains (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX domains_app ON domains (app, name);

-- The outbox: one row per change, written in the transaction that made it.
CREATE TABLE events (
    revision        INTEGER PRIMARY KEY AUTOINCREMENT,
    type            TEXT    NOT NULL,
    domain          TEXT    NOT NULL,
    payload         TEXT,                      -- the domain row as of this revision (JSON)
    challenge_token TEXT    NOT NULL DEFAULT '',
    challenge_keyauth TEXT  NOT NULL DEFAULT '',
    at              INTEGER NOT NULL
);
CREATE INDEX events_at ON events (at);

-- Certificates the CA issued, kept after a domain is removed: quotas count them.
CREATE TABLE issuances (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    domain            TEXT    NOT NULL,
    registered_domain TEXT    NOT NULL,
    names_key         TEXT    NOT NULL,
    serial            TEXT    NOT NULL,
    issued_at         INTEGER NOT NULL
);
CREATE INDEX issuances_registered ON issuances (registered_domain, issued_at);
CREATE INDEX issuances_names ON issuances (names_key, issued_at);

-- An order in flight: written before the CA is contacted, so a crash resumes it
-- instead of ordering twice; it also reserves a quota slot.
CREATE TABLE orders (
    domain            TEXT    PRIMARY KEY,
    registered_domain TEXT    NOT NULL,
    names_key         TEXT    NOT NULL,
    names_json        TEXT    NOT NULL,
    key_sealed        BLOB    NOT NULL,
    order_url         TEXT    NOT NULL DEFAULT '',
    started_at        INTEGER NOT NULL
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
