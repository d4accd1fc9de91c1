-- Rollback of phase 4 (strategy 3.4 and 5.1 step 1): drop both foreign keys, in one ALTER (one
-- brief ACCESS EXCLUSIVE lock on client_app_overrides, under the runner's lock_timeout). No data
-- changes: the linkage columns keep their values.
-- Dropping the foreign keys locks client_app_overrides and both referenced tables; an autovacuum
-- holding one of them is cancelled by the runner after a lock timeout (pgmigrate.py).
DO $$
DECLARE
    found text[];
BEGIN
    SELECT array_agg(conname::text ORDER BY conname) INTO found
      FROM pg_constraint
     WHERE conrelid = 'client_app_overrides'::regclass
       AND conname IN ('fk_cao_marketplace_module', 'fk_cao_installation');
    ALTER TABLE client_app_overrides
        DROP CONSTRAINT IF EXISTS fk_cao_marketplace_module,
        DROP CONSTRAINT IF EXISTS fk_cao_installation;
    RAISE NOTICE 'pgmigrate: dropped=%', array_to_string(found, ', ');
END
$$;
