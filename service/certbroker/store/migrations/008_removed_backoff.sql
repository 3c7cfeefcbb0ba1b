-- The backoff of a failing domain outlives its removal (certbroker.app.remove_domain):
-- removing a name and adding it again must not reset the wait and order at once, or a
-- remove/add loop would spend the shared ACME account's order and failed-validation
-- limits as a retry-now loop once did. One row per name, until its wait runs out.
CREATE TABLE removed_backoff (
    name               TEXT    PRIMARY KEY,
    app                TEXT    NOT NULL,
    attempt            INTEGER NOT NULL,
    next_attempt_at    INTEGER NOT NULL,
    last_error_reason  TEXT    NOT NULL,
    last_error_message TEXT    NOT NULL,
    last_error_at      INTEGER,
    forced_retry_at    INTEGER
);
CREATE INDEX removed_backoff_until ON removed_backoff (next_attempt_at);
