-- ACME Renewal Information (RFC 9773): the time the broker picked inside the CA's
-- suggested renewal window for the current Let's Encrypt certificate (NULL: two thirds
-- of its lifetime), and when to fetch that window again (NULL: the CA offers none, or
-- the certificate predates this column and is renewed at two thirds once more).
ALTER TABLE domains ADD COLUMN ari_renew_at BIGINT;
ALTER TABLE domains ADD COLUMN ari_next_check BIGINT;
