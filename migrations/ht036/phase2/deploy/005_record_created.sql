-- Phase 2, step 0: before creating anything, record in the ledger which of the objects phase 2
-- creates are absent, so a rollback drops exactly what the migration added. A table the
-- preflight adopted (already there with the right shape), or a column already there, is not
-- recorded and survives a rollback with its data. The 'record' row says this bookkeeping ran: a
-- ledger without it predates it, and its rollback falls back to the strategy's rule (drop all).
-- A rerun after an interruption keeps the first run's records (ON CONFLICT DO NOTHING).
INSERT INTO migration_ledger.created_objects (kind, name, phase)
SELECT 'table', t, '2'
  FROM unnest(ARRAY['orchestration_workflows', 'workflow_executions', 'handover_packages',
                    'integration_events']) AS t
 WHERE to_regclass(t) IS NULL
UNION ALL
SELECT 'column', 'client_app_overrides.' || c, '2'
  FROM unnest(ARRAY['marketplace_module_id', 'installation_id', 'activation_status',
                    'activation_metadata']) AS c
 WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = 'client_app_overrides'::regclass
                      AND a.attname = c AND NOT a.attisdropped)
UNION ALL
SELECT 'index', i, '2'
  FROM unnest(ARRAY['idx_cao_marketplace_module', 'idx_cao_installation', 'idx_mm_name']) AS i
 WHERE to_regclass(i) IS NULL
UNION ALL
SELECT 'record', 'phase 2', '2'
ON CONFLICT DO NOTHING;
