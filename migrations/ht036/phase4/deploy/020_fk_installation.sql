-- Phase 4, step 2: fk_cao_installation, NOT VALID like step 1, in its own short transaction.
-- Delete rule from the strategy: deleting an installation deletes its overrides (CASCADE).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conname = 'fk_cao_installation'
                      AND conrelid = 'client_app_overrides'::regclass) THEN
        ALTER TABLE client_app_overrides
            ADD CONSTRAINT fk_cao_installation
            FOREIGN KEY (installation_id)
            REFERENCES module_installations (id) ON DELETE CASCADE
            NOT VALID;
    END IF;
END
$$;
