-- pgmigrate: batches
-- Phase 3, step 3: one onboarding workflow per client, named and dated as the strategy says.
-- Guarded by the unique index uq_ow_client_onboarding; the inserted ids go to the ledger so a
-- rollback deletes exactly these rows.
-- One batch of clients in id order (pgmigrate_sql runs it again and again, each batch in its
-- own short transaction, the throttle between them, until a batch takes no client): from
-- :'from' on, at most :batch_size clients.
-- Each check is a probe of the client's key (OFFSET 0 keeps an EXISTS a per-row subquery): as a
-- join or a hashed subquery, the planner read the whole of client_deployments (40,000 rows), or
-- of the workflows inserted so far, in every batch - a batch's cost grew with the tables, not
-- with the batch.
WITH batch AS (
    SELECT c.id, c.name, c.created_at
      FROM clients_enhanced c
     WHERE c.id >= :'from'::uuid
     ORDER BY c.id
     LIMIT :batch_size
),
inserted AS (
    INSERT INTO orchestration_workflows
        (workflow_name, workflow_type, client_id, workflow_definition, status, created_at)
    SELECT 'Client Setup - ' || c.name,
           'client_onboarding',
           c.id,
           jsonb_build_object('version', 1, 'steps', jsonb_build_array(
               jsonb_build_object('key', 'account_setup', 'name', 'Account setup', 'status', 'completed'),
               jsonb_build_object('key', 'module_installation', 'name', 'Install marketplace modules', 'status',
                   CASE WHEN EXISTS (SELECT 1 FROM module_installations mi WHERE mi.tenant_id = c.id)
                        THEN 'completed' ELSE 'pending' END),
               jsonb_build_object('key', 'configuration', 'name', 'Configure apps', 'status', 'pending'),
               jsonb_build_object('key', 'deployment', 'name', 'Deploy', 'status',
                   CASE WHEN EXISTS (SELECT 1 FROM client_deployments d
                                      WHERE d.client_id = c.id AND d.status = 'deployed' OFFSET 0)
                        THEN 'completed' ELSE 'pending' END),
               jsonb_build_object('key', 'handover', 'name', 'Handover', 'status', 'pending'))),
           'in_progress',
           c.created_at
      FROM batch c
     WHERE NOT EXISTS (SELECT 1 FROM orchestration_workflows w
                        WHERE w.client_id = c.id AND w.workflow_type = 'client_onboarding' OFFSET 0)
    ON CONFLICT DO NOTHING
    RETURNING id
),
recorded AS (
    INSERT INTO migration_ledger.phase3_inserted (table_name, row_id)
    SELECT 'orchestration_workflows', id FROM inserted
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS taken,
       (SELECT id::text FROM batch ORDER BY id DESC LIMIT 1) AS last,
       (SELECT count(*) FROM recorded) AS rows;
