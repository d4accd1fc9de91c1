-- Rollback of phase 3, after the transition is closed (010): fold the whole of the sync's log
-- into phase3_override_sync, in a short transaction of its own, before the batches put back
-- what that record says (revert/batches/005). A write the sync made after this (a transaction
-- that saw the transition open and committed later) is folded by revert/005 at the end, as the
-- sync's upsert of it would have been recorded then. Nothing to do after the cutover (it folded
-- everything, and its functions are gone).
DO $$
BEGIN
    IF to_regprocedure('migration_ledger.transition_fold_sync_log(integer, boolean)') IS NOT NULL THEN
        PERFORM migration_ledger.transition_fold_sync_log(NULL, true);
    END IF;
END
$$;
