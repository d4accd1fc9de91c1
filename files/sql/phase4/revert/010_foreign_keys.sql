-- Rollback of phase 4 (strategy 3.4 and 5.1 step 1): drop both foreign keys, in one ALTER (one
-- brief ACCESS EXCLUSIVE lock on client_app_overrides, under the runner's lock_timeout). No data
-- changes: the linkage columns keep their values.
-- Dropping the foreign keys locks client_app_overrides and both referenced tables.
-- An autovacuum of those tables would hold this step off: PostgreSQL cancels a (non-wraparound)
-- autovacuum itself only once a conflicting lock request has waited deadlock_timeout (1 s), and
-- our requests give up after lock_timeout (50 ms), attempt after attempt (after phase 3's
-- writes, autovacuum is due). So we ask as PostgreSQL would (as the deploy steps do); an
-- anti-wraparound vacuum (its query ends in "(to prevent wraparound)") is left alone, and
-- without the right to signal autovacuum the step waits for it, as before.
DO $$
BEGIN
    PERFORM pg_cancel_backend(a.pid)
       FROM pg_stat_activity AS a
      WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database()
        AND a.query ~ '[ .](client_app_overrides|marketplace_modules|module_installations)$';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END
$$;

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
