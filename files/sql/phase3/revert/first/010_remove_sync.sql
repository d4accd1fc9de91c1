-- Remove the transition's sync (phase 3's 005 and 007): its triggers, then its functions and
-- the linkage rule. Run first when phase 3 is rolled back, in a short transaction of its own
-- (before the batches put the overrides back, so nothing derives them again meanwhile), and by
-- playbooks/complete.yml at the cutover. DROP TRIGGER takes an ACCESS EXCLUSIVE lock on each
-- table for an instant, under the runner's lock_timeout. Idempotent: after the cutover a
-- rollback finds nothing to drop here and still puts back what the sync wrote (its record,
-- migration_ledger.phase3_override_sync, stays until then).
DROP TRIGGER IF EXISTS pgmigrate_transition_override ON client_app_overrides;
DROP TRIGGER IF EXISTS pgmigrate_transition_installation ON module_installations;
DROP TRIGGER IF EXISTS pgmigrate_transition_listing ON marketplace_modules;
DROP FUNCTION IF EXISTS migration_ledger.transition_sync_override();
DROP FUNCTION IF EXISTS migration_ledger.transition_sync_installation();
DROP FUNCTION IF EXISTS migration_ledger.transition_sync_listing();
DROP FUNCTION IF EXISTS migration_ledger.transition_relink(uuid, text[]);
DROP FUNCTION IF EXISTS migration_ledger.phase3_linkage(uuid, text, boolean);
DROP FUNCTION IF EXISTS migration_ledger.phase3_installed_event(uuid, uuid, uuid, timestamptz, text);
