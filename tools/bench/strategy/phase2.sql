-- (a) Phase 2 of the strategy as written (section 3.2). The four tables' DDL is elided in the
-- strategy: filled with ours (migrations/ht036/phase2/deploy/020_tables.sql). The indexes on the live
-- table are built as the strategy writes them: plain CREATE INDEX (it blocks writes while it
-- builds).
ALTER TABLE client_app_overrides
  ADD COLUMN IF NOT EXISTS marketplace_module_id UUID,
  ADD COLUMN IF NOT EXISTS installation_id UUID,
  ADD COLUMN IF NOT EXISTS activation_status VARCHAR(50) DEFAULT 'pending',
  ADD COLUMN IF NOT EXISTS activation_metadata JSONB DEFAULT '{}';

\ir ../../../migrations/ht036/phase2/deploy/020_tables.sql

CREATE INDEX IF NOT EXISTS idx_cao_marketplace_module
ON client_app_overrides(marketplace_module_id);

CREATE INDEX IF NOT EXISTS idx_cao_installation
ON client_app_overrides(installation_id);
