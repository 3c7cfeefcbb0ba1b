-- The DNS-01 delegation label travels with its domain (certbroker.delegation): new
-- domains get a label bound to their app when added; the DNS-01 domains that exist now
-- keep the label their customers' CNAMEs already point at, SHA-256 of the name alone.
-- certbroker_legacy_label() computes it; the migrator registers it, in Python, for the
-- migrations only (SQLite has no SHA-256), so nothing in the schema depends on it.
--
-- One base name has at most two rows, x and *.x, and both validated at
-- _acme-challenge.x. If they belong to two apps, only the older one keeps the legacy
-- label: the customer made the record for whoever came first, and the later one may be
-- exactly the cross-app claim this change stops. The newer one gets no label here, so
-- the broker derives its owner-bound label and asks for a new record (ACTION_REQUIRED).
ALTER TABLE domains ADD COLUMN delegation_label TEXT NOT NULL DEFAULT '';
UPDATE domains SET delegation_label = certbroker_legacy_label(name)
WHERE (challenge = 'DNS_01' OR name LIKE '*.%')
  AND NOT EXISTS (
    SELECT 1 FROM domains AS sibling
    WHERE sibling.name = CASE WHEN domains.name LIKE '*.%'
                              THEN substr(domains.name, 3) ELSE '*.' || domains.name END
      AND sibling.app != domains.app
      AND (sibling.challenge = 'DNS_01' OR sibling.name LIKE '*.%')
      AND (sibling.created_at < domains.created_at
           OR (sibling.created_at = domains.created_at AND sibling.name < domains.name))
  );
