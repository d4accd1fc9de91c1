-- Rollback of phase 4 (strategy 3.4 and 5.1 step 1): drop both foreign keys, in one ALTER (one
-- brief ACCESS EXCLUSIVE lock on client_app_overrides, under the runner's lock_timeout). No data
-- changes: the linkage columns keep their values.
ALTER TABLE client_app_overrides
    DROP CONSTRAINT IF EXISTS fk_cao_marketplace_module,
    DROP CONSTRAINT IF EXISTS fk_cao_installation;
