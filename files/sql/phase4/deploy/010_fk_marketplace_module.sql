-- Phase 4, step 1: fk_cao_marketplace_module, added NOT VALID: no scan, only a brief SHARE ROW
-- EXCLUSIVE lock on both tables, taken under the runner's lock_timeout. Step 3 validates it.
-- Delete rule from the strategy: deleting a module unlinks its overrides (SET NULL).
-- An autovacuum of the table holds this step off: PostgreSQL cancels a (non-wraparound)
-- autovacuum by itself once a conflicting lock request has waited deadlock_timeout (1 s), but our
-- requests give up after lock_timeout (50 ms), long before, and would wait for the vacuum to end,
-- attempt after attempt (after phase 3's updates, autovacuum is due on client_app_overrides). So
-- we ask as PostgreSQL would, and autovacuum comes back later. An anti-wraparound vacuum (its
-- query ends in "(to prevent wraparound)") is left alone, as PostgreSQL leaves it; without the
-- right to signal autovacuum (superuser) the step waits for the vacuum, as before.
DO $$
BEGIN
    PERFORM pg_cancel_backend(a.pid)
       FROM pg_stat_activity AS a
      WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database()
        AND a.query ~ '[ .](client_app_overrides|marketplace_modules)$';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conname = 'fk_cao_marketplace_module'
                      AND conrelid = 'client_app_overrides'::regclass) THEN
        ALTER TABLE client_app_overrides
            ADD CONSTRAINT fk_cao_marketplace_module
            FOREIGN KEY (marketplace_module_id)
            REFERENCES marketplace_modules (id) ON DELETE SET NULL
            NOT VALID;
    END IF;
END
$$;
