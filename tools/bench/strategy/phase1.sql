-- (a) Phase 1 of the strategy as written (section 3.1), run by psql after pg_dump and
-- `pg_restore --list`. Autocommit, like the document's snippets. "Verify table existence"
-- is elided in the strategy; filled like our preflight: the required tables and columns.
SELECT table_name, count(*) AS columns
  FROM information_schema.columns
 WHERE table_schema = current_schema()
   AND table_name IN ('clients_enhanced', 'marketplace_modules', 'module_installations',
                      'client_app_overrides', 'client_deployments')
 GROUP BY table_name;

-- Run integrity checks
SELECT COUNT(*) FROM clients_enhanced;
SELECT COUNT(*) FROM marketplace_modules;
SELECT COUNT(*) FROM module_installations;
SELECT COUNT(*) FROM client_app_overrides;

-- Backup critical tables
CREATE TABLE migration_backup_client_app_overrides AS
SELECT * FROM client_app_overrides;

CREATE TABLE migration_backup_clients_enhanced AS
SELECT * FROM clients_enhanced;

-- Identify orphaned records before migration
SELECT COUNT(*) FROM client_app_overrides cao
WHERE NOT EXISTS (
  SELECT 1 FROM clients_enhanced WHERE id = cao.client_id
);
