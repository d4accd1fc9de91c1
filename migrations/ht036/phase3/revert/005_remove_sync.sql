-- Remove the transition's sync (phase 3's 005 and 007): its triggers, then its functions and
-- the linkage rule. Run by playbooks/complete.yml at the cutover, and by the rollback of phase 3
-- at the head of its last transaction (before it puts back what is left): revert/first/ has
-- already closed the transition, so the sync has written nothing since the batches began.
-- DROP TRIGGER takes an ACCESS EXCLUSIVE lock on each table for an instant, under the runner's
-- lock_timeout; it waits for the application's open transactions on those tables, whose writes
-- the statements after it then see. Idempotent: after the cutover a rollback finds nothing to
-- drop and still puts back what the sync wrote (its record, phase3_override_sync, stays).
DROP TRIGGER IF EXISTS pgmigrate_transition_override ON client_app_overrides;
DROP TRIGGER IF EXISTS pgmigrate_transition_installation ON module_installations;
DROP TRIGGER IF EXISTS pgmigrate_transition_listing ON marketplace_modules;
-- With the triggers gone (and every transaction that wrote through them ended), nothing more is
-- queued or logged: drain the queue to the end (applied while the transition is open, at the
-- cutover; discarded once a rollback closed it), waiting for a drainer's claimed entries under
-- lock_timeout, and fold the whole log into phase3_override_sync, before the functions go.
DO $$
DECLARE
    n integer;
BEGIN
    IF to_regprocedure('migration_ledger.transition_drain(integer)') IS NOT NULL THEN
        PERFORM 1 FROM migration_ledger.transition_queue FOR UPDATE;
        LOOP
            n := migration_ledger.transition_drain(10000);
            EXIT WHEN NOT EXISTS (SELECT 1 FROM migration_ledger.transition_queue);
            IF n = 0 THEN
                RAISE EXCEPTION 'pgmigrate: % queued transition entries could not be applied: another session holds their clients'' advisory locks (pg_locks, locktype advisory)',
                      (SELECT count(*) FROM migration_ledger.transition_queue)
                      USING ERRCODE = 'lock_not_available';
            END IF;
        END LOOP;
        PERFORM migration_ledger.transition_fold_sync_log(NULL, true);
    END IF;
END
$$;
DROP FUNCTION IF EXISTS migration_ledger.transition_sync_override();
DROP FUNCTION IF EXISTS migration_ledger.transition_sync_installation();
DROP FUNCTION IF EXISTS migration_ledger.transition_sync_listing();
DROP FUNCTION IF EXISTS migration_ledger.transition_drain(integer);
DROP FUNCTION IF EXISTS migration_ledger.transition_queue_state();
DROP FUNCTION IF EXISTS migration_ledger.transition_fold_sync_log(integer, boolean);
DROP FUNCTION IF EXISTS migration_ledger.transition_relink(uuid, text[]);
-- made by earlier versions of 007 (the open check is inline now)
DROP FUNCTION IF EXISTS migration_ledger.transition_open();
DROP FUNCTION IF EXISTS migration_ledger.phase3_linkage(uuid, text, boolean);
DROP FUNCTION IF EXISTS migration_ledger.phase3_linkage_choice(uuid, integer, uuid, uuid, boolean);
DROP VIEW IF EXISTS migration_ledger.phase3_listings;
DROP VIEW IF EXISTS migration_ledger.phase3_installed_listings;
-- the sets as functions, made by earlier versions of 005
DROP FUNCTION IF EXISTS migration_ledger.phase3_listings();
DROP FUNCTION IF EXISTS migration_ledger.phase3_installed_listings();
DROP FUNCTION IF EXISTS migration_ledger.phase3_installed_event(uuid, uuid, uuid, timestamptz, text);
