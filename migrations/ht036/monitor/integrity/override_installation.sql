-- Overrides linked to an installation that does not exist (phase 3's link, before phase 4's
-- foreign key enforces it).
SELECT count(*) FROM client_app_overrides o
 WHERE o.installation_id IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM module_installations i WHERE i.id = o.installation_id)
