-- pgmigrate: batches
-- Phase 3, step 4: one handover package per client with a deployed deployment, attached to the
-- client's onboarding workflow. installed_modules lists the client's installations;
-- module_configurations maps each app override (by app_name) to its linkage and settings state.
-- Guarded: a client that already has a package for that workflow gets no second one.
-- The last statement is one batch of clients in id order (pgmigrate_sql runs the others once,
-- then it again and again, each batch in its own short transaction, the throttle between them,
-- until a batch takes no client): from :'from' on, at most :batch_size clients. The workflow and
-- both checks are probes of the client's key, as in 030 (OFFSET 0): as joins, the planner hashed
-- every workflow (100,000 rows), or read all of client_deployments, in every batch.
--
-- It runs beside the backfill (020), not after it: the linkage phase 3 sets is in the plan
-- (010). An override still holding the values the plan recorded before phase 3 is described
-- with the values the backfill writes (the plan's module and installation, the status of its
-- enabled); any other override (linked already, or changed by the application, which the
-- backfill then leaves alone) with the values it holds. An installation's status (a column the
-- strategy never names) is read from the row as JSON: null where module_installations has none.

-- Fresh statistics first: the workflows (030) were just inserted, and this statement joins them
-- and checks its foreign key against them.
ANALYZE orchestration_workflows;

WITH batch AS (
    SELECT c.id, c.name
      FROM clients_enhanced c
     WHERE c.id >= :'from'::uuid
     ORDER BY c.id
     LIMIT :batch_size
),
inserted AS (
    INSERT INTO handover_packages
        (client_id, workflow_id, package_name, installed_modules, module_configurations)
    SELECT c.id,
           ow.id,
           'Handover Package - ' || c.name,
           COALESCE((SELECT jsonb_agg(jsonb_build_object(
                                'installation_id', mi.id, 'module_id', mi.module_id,
                                'module_name', mm.name, 'installed_at', mi.installed_at,
                                'status', to_jsonb(mi) -> 'status') ORDER BY mi.installed_at, mi.id)
                       FROM module_installations mi
                       JOIN marketplace_modules mm ON mm.id = mi.module_id
                      WHERE mi.tenant_id = c.id), '[]'::jsonb),
           COALESCE((SELECT jsonb_object_agg(o.app_name, CASE
                           WHEN p.override_id IS NOT NULL
                            AND (o.marketplace_module_id, o.installation_id, o.activation_status)
                                IS NOT DISTINCT FROM (p.old_module_id, p.old_installation_id, p.old_status)
                           THEN jsonb_build_object(
                                'enabled', o.enabled,
                                'activation_status', CASE WHEN o.enabled THEN 'active' ELSE 'inactive' END,
                                'marketplace_module_id', p.module_id,
                                'installation_id', p.installation_id)
                           ELSE jsonb_build_object(
                                'enabled', o.enabled, 'activation_status', o.activation_status,
                                'marketplace_module_id', o.marketplace_module_id,
                                'installation_id', o.installation_id) END)
                       FROM client_app_overrides o
                       LEFT JOIN migration_ledger.phase3_override_plan p ON p.override_id = o.id
                      WHERE o.client_id = c.id), '{}'::jsonb)
      FROM batch c
     CROSS JOIN LATERAL (SELECT w.id FROM orchestration_workflows w
                          WHERE w.client_id = c.id AND w.workflow_type = 'client_onboarding' OFFSET 0) AS ow
     WHERE EXISTS (SELECT 1 FROM client_deployments d
                    WHERE d.client_id = c.id AND d.status = 'deployed' OFFSET 0)
       AND NOT EXISTS (SELECT 1 FROM handover_packages hp
                        WHERE hp.client_id = c.id AND hp.workflow_id = ow.id OFFSET 0)
    RETURNING id
),
recorded AS (
    INSERT INTO migration_ledger.phase3_inserted (table_name, row_id)
    SELECT 'handover_packages', id FROM inserted
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS taken,
       (SELECT id::text FROM batch ORDER BY id DESC LIMIT 1) AS last,
       (SELECT count(*) FROM recorded) AS rows;
