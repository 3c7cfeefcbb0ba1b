-- A wildcard may ask for its apex in the same certificate.
ALTER TABLE domains ADD COLUMN include_apex INTEGER NOT NULL DEFAULT 0;
