-- Phase 4, step 2: fk_cao_installation, NOT VALID like step 1, in its own short transaction.
-- Delete rule from the strategy: deleting an installation deletes its overrides (CASCADE).
-- First cancel an autovacuum of either table (see 010_fk_marketplace_module.sql).
DO $$
BEGIN
    PERFORM pg_cancel_backend(a.pid)
       FROM pg_stat_activity AS a
      WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database()
        AND a.query ~ '[ .](client_app_overrides|module_installations)$';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END
$$;

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
