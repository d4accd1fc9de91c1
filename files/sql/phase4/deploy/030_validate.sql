-- pgmigrate: no-transaction
-- Phase 4, step 3: validate both foreign keys. VALIDATE CONSTRAINT scans the table under SHARE
-- UPDATE EXCLUSIVE, which lets reads and writes go on; each runs in its own autocommit
-- statement. Validating an already valid constraint is a no-op, so a rerun is safe.
-- VALIDATE's SHARE UPDATE EXCLUSIVE lock conflicts with an autovacuum of the table: each first
-- cancels one (see 010_fk_marketplace_module.sql).
DO $$
BEGIN
    PERFORM pg_cancel_backend(a.pid)
       FROM pg_stat_activity AS a
      WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database()
        AND a.query ~ '[ .]client_app_overrides$';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END
$$;

ALTER TABLE client_app_overrides VALIDATE CONSTRAINT fk_cao_marketplace_module;

DO $$
BEGIN
    PERFORM pg_cancel_backend(a.pid)
       FROM pg_stat_activity AS a
      WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database()
        AND a.query ~ '[ .]client_app_overrides$';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END
$$;

ALTER TABLE client_app_overrides VALIDATE CONSTRAINT fk_cao_installation;
