-- PostgreSQL mirror of ../010_exact_parent.sql: the parent of the exact name a row's
-- certificate holds, for the family rule's lookups (certbroker.tenancy) by index.
--   y.x -> x    *.y.x with include_apex -> x    *.y.x without -> NULL    x -> parent of x
-- STORED (PostgreSQL has no virtual generated columns before 18): adding it fills the
-- rows already there; every later write computes it.
ALTER TABLE domains ADD COLUMN exact_parent TEXT GENERATED ALWAYS AS (
    CASE
        WHEN left(name, 2) <> '*.' THEN
            CASE WHEN strpos(name, '.') > 0 THEN substr(name, strpos(name, '.') + 1) END
        WHEN include_apex <> 0 THEN
            CASE
                WHEN strpos(substr(name, 3), '.') > 0
                THEN substr(name, 3 + strpos(substr(name, 3), '.'))
            END
    END
) STORED;
CREATE INDEX domains_exact_parent ON domains (exact_parent, app);
