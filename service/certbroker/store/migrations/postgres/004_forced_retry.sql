-- When a caller last forced a retry of a failing domain (IssueCertificate on a known
-- name): forced retries are rationed by it, and a restart must not reopen the allowance.
ALTER TABLE domains ADD COLUMN forced_retry_at BIGINT;
