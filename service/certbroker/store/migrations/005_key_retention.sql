-- A certificate is retired by the write that stops naming it as the domain's
-- Let's Encrypt or custom certificate (NULL while it still is one). Its row and
-- sealed key are deleted once both the key retention has passed since
-- retired_at and every watch event before retired_revision has been compacted.
ALTER TABLE certificates ADD COLUMN retired_at INTEGER;
ALTER TABLE certificates ADD COLUMN retired_revision INTEGER;
CREATE INDEX certificates_retired ON certificates (retired_at) WHERE retired_at IS NOT NULL;
-- Deleting a certificate makes SQLite look for domains still naming it (the foreign
-- keys); without these indexes that is a scan of every domain per deleted row.
CREATE INDEX domains_le_cert ON domains (le_cert_id) WHERE le_cert_id IS NOT NULL;
CREATE INDEX domains_custom_cert ON domains (custom_cert_id) WHERE custom_cert_id IS NOT NULL;
