-- pgmigrate: no-transaction
-- Phase 2, step 3: indexes on the live table, built CONCURRENTLY (no write lock). The runner
-- drops and rebuilds an index an interrupted build left invalid. They also serve the ON DELETE
-- actions of phase 4's foreign keys.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_cao_marketplace_module
    ON client_app_overrides (marketplace_module_id);

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_cao_installation
    ON client_app_overrides (installation_id);

-- The transition's sync (phase 3, docs/transition.md) looks the application's app_name up
-- among the listings on every override it derives.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_mm_name
    ON marketplace_modules (name);
