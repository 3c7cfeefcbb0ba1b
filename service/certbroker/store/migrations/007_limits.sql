-- The CA's rate limits, mirrored as token buckets (certbroker.limits): every token an
-- order spent, and every pause the CA asked for. The buckets are rebuilt from these
-- rows at each check, so a restart or a crash loses nothing.
CREATE TABLE limit_spends (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket  TEXT    NOT NULL,   -- account_orders | registered_domain | name_set | failed_authorizations
    key     TEXT    NOT NULL,   -- '' | the registered domain | the names key | one name
    domain  TEXT    NOT NULL,   -- whose order spent it (refunds)
    at      INTEGER NOT NULL
);
CREATE INDEX limit_spends_bucket ON limit_spends (bucket, key, at);
CREATE INDEX limit_spends_domain ON limit_spends (domain, at);

CREATE TABLE limit_pauses (
    bucket  TEXT    NOT NULL,   -- as above, or account: the whole ACME account
    key     TEXT    NOT NULL,
    until   INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
);

-- What was counted before: the last 35 days of issuances (longer ago no bucket looks),
-- and the orders in flight, which reserved their slots. A certificate whose exact names
-- were issued before is a renewal: the CA spends no new-order or registered-domain
-- token for it.
INSERT INTO limit_spends (bucket, key, domain, at)
SELECT 'name_set', names_key, domain, issued_at FROM issuances
WHERE issued_at > (CAST(strftime('%s', 'now') AS INTEGER) - 35 * 86400) * 1000000;
INSERT INTO limit_spends (bucket, key, domain, at)
SELECT bucket, CASE bucket WHEN 'account_orders' THEN '' ELSE i.registered_domain END,
       i.domain, i.issued_at
FROM issuances AS i, (SELECT 'account_orders' AS bucket UNION ALL SELECT 'registered_domain')
WHERE i.issued_at > (CAST(strftime('%s', 'now') AS INTEGER) - 35 * 86400) * 1000000
  AND NOT EXISTS (SELECT 1 FROM issuances AS earlier
                  WHERE earlier.names_key = i.names_key AND earlier.issued_at < i.issued_at);
INSERT INTO limit_spends (bucket, key, domain, at)
SELECT 'name_set', names_key, domain, started_at FROM orders;
INSERT INTO limit_spends (bucket, key, domain, at)
SELECT bucket, CASE bucket WHEN 'account_orders' THEN '' ELSE o.registered_domain END,
       o.domain, o.started_at
FROM orders AS o, (SELECT 'account_orders' AS bucket UNION ALL SELECT 'registered_domain')
WHERE NOT EXISTS (SELECT 1 FROM issuances AS earlier WHERE earlier.names_key = o.names_key);
