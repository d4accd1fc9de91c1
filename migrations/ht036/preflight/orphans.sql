-- The strategy's integrity counts before phase 1 (the preflight's orphan report): rows that
-- refer to rows that do not exist, and what phase 3's link cannot resolve. Read-only, in the
-- preflight's one snapshot. Rows of (name, count).
SELECT 'orphaned_overrides', count(*) FROM client_app_overrides cao
 WHERE NOT EXISTS (SELECT 1 FROM clients_enhanced WHERE id = cao.client_id)
UNION ALL
SELECT 'orphaned_installations', count(*) FROM module_installations mi
 WHERE NOT EXISTS (SELECT 1 FROM clients_enhanced WHERE id = mi.tenant_id)
UNION ALL
SELECT 'overrides_with_unknown_app', count(*) FROM client_app_overrides cao
 WHERE NOT EXISTS (SELECT 1 FROM marketplace_modules mm WHERE mm.name = cao.app_name)
UNION ALL
SELECT 'duplicated_module_names', count(*) FROM (SELECT name FROM marketplace_modules GROUP BY name
                                                   HAVING count(*) > 1) d
UNION ALL
SELECT 'clients_without_deployments', count(*) FROM clients_enhanced c
 WHERE NOT EXISTS (SELECT 1 FROM client_deployments d WHERE d.client_id = c.id)
