-- A certificate is retired by the write that stops naming it as the domain's
-- Let's Encrypt or custom certificate (NULL while it still is one). Its row and
-- sealed key are deleted once both the key retention has passed since
-- retired_at and every watch event before retired_revision has been compacted.
ALTER TABLE certificates ADD COLUMN retired_at BIGINT;
ALTER TABLE certificates ADD COLUMN retired_revision BIGINT;
CREATE INDEX certificates_retired ON certificates (retired_at) WHERE retired_at IS NOT NULL;
-- Deleting a certificate makes the foreign keys look for domains still naming it.
CREATE INDEX domains_le_cert ON domains (le_cert_id) WHERE le_cert_id IS NOT NULL;
CREATE INDEX domains_custom_cert ON domains (custom_cert_id) WHERE custom_cert_id IS NOT NULL;
