-- Post-migration cleanup (strategy 4.1 step 1): drop the backup tables, once past their
-- retention. cleanup.yml checks the age (phase 1's finish time in the ledger) first.
DROP TABLE IF EXISTS migration_backup_client_app_overrides;
DROP TABLE IF EXISTS migration_backup_clients_enhanced;
