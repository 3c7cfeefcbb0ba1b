-- The DNS-01 delegation label travels with its domain (certbroker.delegation). SQLite's
-- 003 also back-fills legacy labels for domains that existed before it; a PostgreSQL
-- database never held such rows (it is created at a later version, or filled by
-- `certbroker migrate-db` with rows that already carry their label), so only the column.
ALTER TABLE domains ADD COLUMN delegation_label TEXT NOT NULL DEFAULT '';
