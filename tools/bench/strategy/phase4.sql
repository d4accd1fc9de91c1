-- (a) Phase 4 of the strategy as written (section 3.4): each foreign key is added and validated
-- in one statement, under SHARE ROW EXCLUSIVE (writes to both tables wait for the scan); then
-- the violation check.
ALTER TABLE client_app_overrides
  ADD CONSTRAINT fk_cao_marketplace_module
  FOREIGN KEY (marketplace_module_id)
  REFERENCES marketplace_modules(id) ON DELETE SET NULL;

ALTER TABLE client_app_overrides
  ADD CONSTRAINT fk_cao_installation
  FOREIGN KEY (installation_id)
  REFERENCES module_installations(id) ON DELETE CASCADE;

-- Check constraint violations
SELECT COUNT(*) FROM client_app_overrides cao
WHERE marketplace_module_id IS NOT NULL
AND NOT EXISTS (
  SELECT 1 FROM marketplace_modules WHERE id = cao.marketplace_module_id
);
