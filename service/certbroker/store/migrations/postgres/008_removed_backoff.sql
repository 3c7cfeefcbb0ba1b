-- The backoff of a failing domain outlives its removal (certbroker.app.remove_domain);
-- see migrations/008_removed_backoff.sql.
CREATE TABLE removed_backoff (
    name               TEXT    PRIMARY KEY,
    app                TEXT    NOT NULL,
    attempt            INTEGER NOT NULL,
    next_attempt_at    BIGINT  NOT NULL,
    last_error_reason  TEXT    NOT NULL,
    last_error_message TEXT    NOT NULL,
    last_error_at      BIGINT,
    forced_retry_at    BIGINT
);
CREATE INDEX removed_backoff_until ON removed_backoff (next_attempt_at);
