-- PostgreSQL mirror of ../009_leases.sql (times in BIGINT microseconds, as everywhere).
-- Several brokers on one database (certbroker.store.base.Store.claim_due): a broker
-- works a due domain only while it holds the domain's lease, which it renews while
-- it works and which lapses by time if it dies. Outside the event-carrying columns
-- (codec.DOMAIN_COLUMNS): a claim writes no event, and a domain write leaves them alone.
ALTER TABLE domains ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
ALTER TABLE domains ADD COLUMN lease_until BIGINT;
-- Only leased rows (a few: those in flight) are in it: "when does the first lapse?"
CREATE INDEX domains_leased ON domains (lease_until) WHERE lease_until IS NOT NULL;
-- Named leases: scheduled jobs that run once across the cluster (compaction) and
-- presence marks ("this broker has routers watching challenges").
CREATE TABLE leases (
    name       TEXT    PRIMARY KEY,
    owner      TEXT    NOT NULL,
    expires_at BIGINT  NOT NULL
);
-- HTTP-01 answers published by any broker, read through by every broker's responder:
-- one row per token and publishing broker, gone when the order ends or at expiry.
CREATE TABLE challenges (
    token             TEXT    NOT NULL,
    owner             TEXT    NOT NULL,
    key_authorization TEXT    NOT NULL,
    expires_at        BIGINT  NOT NULL,
    PRIMARY KEY (token, owner)
);
CREATE INDEX challenges_expiry ON challenges (expires_at);
