-- Phase 4, step 1: fk_cao_marketplace_module, added NOT VALID: no scan, only a brief SHARE ROW
-- EXCLUSIVE lock on both tables, taken under the runner's lock_timeout. Step 3 validates it.
-- Delete rule from the strategy: deleting a module unlinks its overrides (SET NULL).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conname = 'fk_cao_marketplace_module'
                      AND conrelid = 'client_app_overrides'::regclass) THEN
        ALTER TABLE client_app_overrides
            ADD CONSTRAINT fk_cao_marketplace_module
            FOREIGN KEY (marketplace_module_id)
            REFERENCES marketplace_modules (id) ON DELETE SET NULL
            NOT VALID;
    END IF;
END
$$;
