-- pgmigrate: no-transaction
-- Phase 2, step 3: indexes on the live table, built CONCURRENTLY (no write lock). The runner
-- drops and rebuilds an index an interrupted build left invalid. They also serve the ON DELETE
-- actions of phase 4's foreign keys.
-- Each build first cancels an autovacuum of the table (see 010_columns.sql): CREATE INDEX
-- CONCURRENTLY's SHARE UPDATE EXCLUSIVE lock conflicts with it.
DO $$
BEGIN
    PERFORM pg_cancel_backend(a.pid)
       FROM pg_stat_activity AS a
      WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database()
        AND a.query ~ '[ .]client_app_overrides$';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END
$$;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_cao_marketplace_module
    ON client_app_overrides (marketplace_module_id);

DO $$
BEGIN
    PERFORM pg_cancel_backend(a.pid)
       FROM pg_stat_activity AS a
      WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database()
        AND a.query ~ '[ .]client_app_overrides$';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END
$$;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_cao_installation
    ON client_app_overrides (installation_id);
