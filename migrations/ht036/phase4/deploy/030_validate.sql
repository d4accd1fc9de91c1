-- pgmigrate: no-transaction
-- Phase 4, step 3: validate both foreign keys. VALIDATE CONSTRAINT scans the table under SHARE
-- UPDATE EXCLUSIVE, which lets reads and writes go on; each runs in its own autocommit
-- statement. Validating an already valid constraint is a no-op, so a rerun is safe.
ALTER TABLE client_app_overrides VALIDATE CONSTRAINT fk_cao_marketplace_module;

ALTER TABLE client_app_overrides VALIDATE CONSTRAINT fk_cao_installation;
