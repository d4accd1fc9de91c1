-- The rollback closes the open transition (status.yml shows it; a rerun of phase 3 opens a new
-- one).
DO $$
BEGIN
    IF to_regclass('migration_ledger.transition') IS NOT NULL THEN
        UPDATE migration_ledger.transition SET rolled_back_at = clock_timestamp()
         WHERE completed_at IS NULL AND rolled_back_at IS NULL;
    END IF;
END
$$;
