-- Phase 4's constraint check (strategy 3.4 step 2), run before validating: rows that would make
-- VALIDATE CONSTRAINT fail. Read-only.
SELECT
  (SELECT count(*) FROM client_app_overrides cao
    WHERE cao.marketplace_module_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM marketplace_modules mm WHERE mm.id = cao.marketplace_module_id))
    AS marketplace_module_violations,
  (SELECT count(*) FROM client_app_overrides cao
    WHERE cao.installation_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM module_installations mi WHERE mi.id = cao.installation_id))
    AS installation_violations;
