-- Phase 2, step 1: the four columns on client_app_overrides, in one ALTER (one lock).
-- Constant defaults are stored in the catalog (PostgreSQL 11+): no table rewrite, the
-- ACCESS EXCLUSIVE lock is held for milliseconds, and is taken under the runner's lock_timeout.
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
        AND a.query ~ '[ .]client_app_overrides$';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END
$$;

ALTER TABLE client_app_overrides
    ADD COLUMN IF NOT EXISTS marketplace_module_id uuid,
    ADD COLUMN IF NOT EXISTS installation_id uuid,
    ADD COLUMN IF NOT EXISTS activation_status varchar(50) DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS activation_metadata jsonb DEFAULT '{}';
