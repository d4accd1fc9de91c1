-- Rollback of phase 3, first, in a short transaction of its own: close the open transition. The
-- sync's functions do nothing once it is closed (they read it on every write), so nothing
-- derives the overrides again while the batches put them back; no lock on the application's
-- tables is needed for that (dropping the triggers, revert/005, waits for their transactions and
-- comes at the end). status.yml shows it; a rerun of phase 3 opens a new transition.
DO $$
BEGIN
    IF to_regclass('migration_ledger.transition') IS NOT NULL THEN
        UPDATE migration_ledger.transition SET rolled_back_at = clock_timestamp()
         WHERE completed_at IS NULL AND rolled_back_at IS NULL;
    END IF;
END
$$;
