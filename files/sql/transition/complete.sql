-- The cutover (playbooks/complete.yml), after phase3/revert/005_remove_sync.sql removed
-- the sync: close the open transition, recording when and by whom. The sync's records
-- (phase3_override_sync, phase3_inserted) stay: a rollback after the cutover still puts back
-- exactly what the sync wrote.
UPDATE migration_ledger.transition
   SET completed_at = clock_timestamp(), completed_by = :'completed_by', completed_run = :'run_id'::uuid
 WHERE completed_at IS NULL AND rolled_back_at IS NULL;
