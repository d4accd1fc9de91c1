-- Finalize (cleanup.yml -e cleanup_finalize=true), after the cutover and the watch: drop what
-- the ledger keeps only so that a rollback of phase 3 is precise - the linkage plan (what phase 3
-- wrote into each override, and what it held before), the transition sync's records (the same
-- for what the sync wrote) and the ids of the rows phase 3 inserted. From then on rollback.yml
-- refuses phase 3 (the ledger records the finalize); restore.yml is the way back. The history,
-- the created objects, the transition's record, the approvals and the watch's samples stay.
-- One transaction: all three or none. Nothing but the migration reads these tables.
DROP TABLE IF EXISTS migration_ledger.phase3_override_plan;
DROP TABLE IF EXISTS migration_ledger.phase3_override_sync;
DROP TABLE IF EXISTS migration_ledger.phase3_inserted;
-- The linkage rule went with the sync at the cutover (phase3/revert/005, which the finalize
-- requires); its views, should one be left, go now: nothing reads them once the sync is gone.
DROP VIEW IF EXISTS migration_ledger.phase3_listings;
DROP VIEW IF EXISTS migration_ledger.phase3_installed_listings;
