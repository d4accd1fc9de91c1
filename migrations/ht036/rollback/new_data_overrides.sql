-- What the new application wrote into the overrides' new columns since the cutover, which a
-- rollback of phase 2 would drop (docs/operations.md#a-rollback-after-the-cutover). Read-only.
-- Rows of (what, count).
-- Relinked: overrides whose new columns differ from what the migration wrote last - the
-- transition's sync record where there is one, else phase 3's plan (the sync is gone after the
-- cutover, so nobody but the application wrote them since).
SELECT 'overrides relinked', count(*) FROM client_app_overrides AS cao
  LEFT JOIN migration_ledger.phase3_override_sync AS s ON s.override_id = cao.id
  LEFT JOIN migration_ledger.phase3_override_plan AS p ON p.override_id = cao.id
 WHERE (s.override_id IS NOT NULL OR p.override_id IS NOT NULL)
   AND (cao.marketplace_module_id, cao.installation_id, cao.activation_status) IS DISTINCT FROM
       (CASE WHEN s.override_id IS NOT NULL THEN s.module_id ELSE p.module_id END,
        CASE WHEN s.override_id IS NOT NULL THEN s.installation_id ELSE p.installation_id END,
        CASE WHEN s.override_id IS NOT NULL THEN s.new_status ELSE p.new_status END)
UNION ALL
-- Overrides the migration never wrote (neither planned nor synced) that hold a link or a status
-- other than phase 2's default: the new application's (an override it inserted, most often).
SELECT 'overrides linked that the migration never wrote', count(*) FROM client_app_overrides AS cao
 WHERE NOT EXISTS (SELECT 1 FROM migration_ledger.phase3_override_sync s WHERE s.override_id = cao.id)
   AND NOT EXISTS (SELECT 1 FROM migration_ledger.phase3_override_plan p WHERE p.override_id = cao.id)
   AND (cao.marketplace_module_id IS NOT NULL OR cao.installation_id IS NOT NULL
        OR cao.activation_status IS DISTINCT FROM 'pending')
UNION ALL
-- The migration never writes activation_metadata: anything but its default is new.
SELECT 'overrides with activation_metadata', count(*) FROM client_app_overrides
 WHERE activation_metadata IS DISTINCT FROM '{}'::jsonb
