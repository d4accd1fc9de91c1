-- Phase 1: the strategy's backup tables, one consistent snapshot of both (REPEATABLE READ).
-- Kept 7 days; playbooks/cleanup.yml drops them. Reading takes only ACCESS SHARE locks.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;

DROP TABLE IF EXISTS migration_backup_client_app_overrides;
CREATE TABLE migration_backup_client_app_overrides AS
SELECT * FROM client_app_overrides;

DROP TABLE IF EXISTS migration_backup_clients_enhanced;
CREATE TABLE migration_backup_clients_enhanced AS
SELECT * FROM clients_enhanced;

-- Backups hold every client's data: keep them from application roles (Supabase's default
-- privileges grant new tables in public to anon and authenticated).
REVOKE ALL ON migration_backup_client_app_overrides, migration_backup_clients_enhanced FROM PUBLIC;
DO $$
DECLARE
    r text;
BEGIN
    FOR r IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated') LOOP
        EXECUTE format('REVOKE ALL ON migration_backup_client_app_overrides, '
                       'migration_backup_clients_enhanced FROM %I', r);
    END LOOP;
END
$$;
