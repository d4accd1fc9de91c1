-- Phase 5, step 2: the three views (the strategy elides their SQL; this is our design).
-- A plain view runs with its owner's rights and would show authenticated every client's rows,
-- so each view filters by the tenant rule itself, and is a security_barrier view so a caller's
-- own functions cannot see rows before that filter runs.

CREATE OR REPLACE VIEW unified_client_dashboard WITH (security_barrier = true) AS
SELECT c.id AS client_id,
       c.name AS client_name,
       c.created_at AS client_created_at,
       ow.id AS onboarding_workflow_id,
       ow.status AS onboarding_status,
       (SELECT count(*) FROM client_app_overrides o WHERE o.client_id = c.id) AS app_overrides,
       (SELECT count(*) FROM client_app_overrides o
         WHERE o.client_id = c.id AND o.activation_status = 'active') AS active_modules,
       (SELECT count(*) FROM module_installations mi WHERE mi.tenant_id = c.id) AS installed_modules,
       (SELECT count(*) FROM handover_packages hp WHERE hp.client_id = c.id) AS handover_packages,
       EXISTS (SELECT 1 FROM client_deployments d
                WHERE d.client_id = c.id AND d.status = 'deployed') AS deployed
  FROM clients_enhanced c
  LEFT JOIN orchestration_workflows ow
    ON ow.client_id = c.id AND ow.workflow_type = 'client_onboarding'
 WHERE (SELECT tenant_sees_all()) OR c.id = (SELECT tenant_client_id());

CREATE OR REPLACE VIEW module_integration_view WITH (security_barrier = true) AS
SELECT cao.id AS override_id,
       cao.client_id,
       cao.app_name,
       cao.enabled,
       cao.activation_status,
       cao.marketplace_module_id,
       mm.name AS module_name,
       cao.installation_id,
       mi.installed_at,
       -- not a column the strategy names: null where module_installations has no status
       to_jsonb(mi) ->> 'status' AS installation_status
  FROM client_app_overrides cao
  LEFT JOIN marketplace_modules mm ON mm.id = cao.marketplace_module_id
  LEFT JOIN module_installations mi ON mi.id = cao.installation_id
 WHERE (SELECT tenant_sees_all()) OR cao.client_id = (SELECT tenant_client_id());

CREATE OR REPLACE VIEW workflow_progress_view WITH (security_barrier = true) AS
SELECT ow.id AS workflow_id,
       ow.client_id,
       ow.workflow_name,
       ow.workflow_type,
       ow.status AS workflow_status,
       jsonb_array_length(COALESCE(ow.workflow_definition -> 'steps', '[]'::jsonb)) AS total_steps,
       (SELECT count(*) FROM jsonb_array_elements(COALESCE(ow.workflow_definition -> 'steps', '[]'::jsonb)) s
         WHERE s ->> 'status' = 'completed') AS completed_steps,
       (SELECT count(*) FROM workflow_executions we WHERE we.workflow_id = ow.id) AS executions,
       (SELECT max(we.created_at) FROM workflow_executions we WHERE we.workflow_id = ow.id) AS last_execution_at,
       ow.created_at,
       ow.updated_at
  FROM orchestration_workflows ow
 WHERE (SELECT tenant_sees_all()) OR ow.client_id = (SELECT tenant_client_id());

-- The dashboard is the one view granted to authenticated (040). Where authenticated may read
-- every application table it reads (040 grants it the two new ones; Supabase: the application's tables are granted to it, under their own
-- row-level security), it runs as its caller (security_invoker, PostgreSQL 15 and later): the
-- application's policies apply on top of the view's own filter, and Supabase's linter has no
-- view running with its owner's rights to report. Elsewhere (authenticated created by phase 5,
-- granted none of the application's tables) it keeps its owner's rights and its own filter.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 150000
       AND to_regrole('authenticated') IS NOT NULL
       AND (SELECT bool_and(to_regclass(t) IS NOT NULL
                            AND has_table_privilege('authenticated', to_regclass(t), 'SELECT'))
              FROM unnest(ARRAY['clients_enhanced', 'client_app_overrides', 'module_installations',
                                'client_deployments']) AS t) THEN
        ALTER VIEW unified_client_dashboard SET (security_invoker = true);
    END IF;
END
$$;
