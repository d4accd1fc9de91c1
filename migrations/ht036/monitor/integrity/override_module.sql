-- Overrides linked to a marketplace module that does not exist (phase 3's link, before
-- phase 4's foreign key enforces it).
SELECT count(*) FROM client_app_overrides o
 WHERE o.marketplace_module_id IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM marketplace_modules m WHERE m.id = o.marketplace_module_id)
