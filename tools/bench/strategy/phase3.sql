-- (a) Phase 3 of the strategy as written (section 3.3): one UPDATE for every override, then the
-- three INSERTs. Their elided expressions (the workflow steps, the package aggregates, the
-- event payload) are filled exactly like ours (migrations/ht036/phase3/deploy/030..050), without our
-- guards and without the ledger.
WITH module_mapping AS (
  SELECT
    cao.id as override_id,
    mm.id as marketplace_module_id,
    mi.id as installation_id
  FROM client_app_overrides cao
  LEFT JOIN marketplace_modules mm ON cao.app_name = mm.name
  LEFT JOIN module_installations mi
    ON mm.id = mi.module_id AND cao.client_id = mi.tenant_id
)
UPDATE client_app_overrides cao
SET
  marketplace_module_id = mm.marketplace_module_id,
  installation_id = mm.installation_id,
  activation_status = CASE
    WHEN cao.enabled = true THEN 'active'
    ELSE 'inactive'
  END
FROM module_mapping mm
WHERE cao.id = mm.override_id
AND mm.marketplace_module_id IS NOT NULL;

INSERT INTO orchestration_workflows (
  workflow_name, workflow_type, client_id,
  workflow_definition, status, created_at
)
SELECT
  'Client Setup - ' || c.name,
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
                             WHERE d.client_id = c.id AND d.status = 'deployed')
               THEN 'completed' ELSE 'pending' END),
      jsonb_build_object('key', 'handover', 'name', 'Handover', 'status', 'pending'))),
  'in_progress',
  c.created_at
FROM clients_enhanced c
WHERE NOT EXISTS (
  SELECT 1 FROM orchestration_workflows WHERE client_id = c.id
);

INSERT INTO handover_packages (
  client_id, workflow_id, package_name,
  installed_modules, module_configurations
)
SELECT
  c.id,
  ow.id,
  'Handover Package - ' || c.name,
  -- Aggregate installed modules
  COALESCE((SELECT jsonb_agg(jsonb_build_object(
                       'installation_id', mi.id, 'module_id', mi.module_id,
                       'module_name', mm.name, 'installed_at', mi.installed_at,
                       'status', mi.status) ORDER BY mi.installed_at, mi.id)
              FROM module_installations mi
              JOIN marketplace_modules mm ON mm.id = mi.module_id
             WHERE mi.tenant_id = c.id), '[]'::jsonb),
  -- Aggregate configurations
  COALESCE((SELECT jsonb_object_agg(o.app_name, jsonb_build_object(
                       'enabled', o.enabled, 'activation_status', o.activation_status,
                       'marketplace_module_id', o.marketplace_module_id,
                       'installation_id', o.installation_id))
              FROM client_app_overrides o
             WHERE o.client_id = c.id), '{}'::jsonb)
FROM clients_enhanced c
JOIN orchestration_workflows ow ON c.id = ow.client_id
WHERE EXISTS (
  SELECT 1 FROM client_deployments
  WHERE client_id = c.id AND status = 'deployed'
);

INSERT INTO integration_events (
  event_type, event_source, event_payload, correlation_id
)
SELECT
  'module_installed',
  'modules',
  jsonb_build_object('installation_id', mi.id, 'module_id', mi.module_id,
                     'tenant_id', mi.tenant_id, 'installed_at', mi.installed_at,
                     'status', mi.status),
  mi.id
FROM module_installations mi
WHERE mi.installed_at >= NOW() - INTERVAL '7 days';
