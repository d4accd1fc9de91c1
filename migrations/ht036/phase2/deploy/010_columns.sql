-- Phase 2, step 1: the four columns on client_app_overrides, in one ALTER (one lock).
-- Constant defaults are stored in the catalog (PostgreSQL 11+): no table rewrite, the
-- ACCESS EXCLUSIVE lock is held for milliseconds, and is taken under the runner's lock_timeout
-- (an autovacuum of the table that holds it off is cancelled after a lock timeout, as PostgreSQL
-- itself would after deadlock_timeout: plugins/module_utils/pgmigrate.py, yield_autovacuum).
ALTER TABLE client_app_overrides
    ADD COLUMN IF NOT EXISTS marketplace_module_id uuid,
    ADD COLUMN IF NOT EXISTS installation_id uuid,
    ADD COLUMN IF NOT EXISTS activation_status varchar(50) DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS activation_metadata jsonb DEFAULT '{}';
