-- Phase 5, step 3: row-level security on every table the migration adds to the application's
-- schema (on Supabase, the schema its API serves), with the strategy's policy names on its two
-- tenant tables. The strategy names two; the other two hold client data as well, and their
-- client is derived: a workflow execution's through its workflow, an integration event's
-- through the installation its correlation_id names (module_installations.id -> tenant_id).
-- authenticated reads and writes only its own client's rows; anon matches no policy, so no row.
-- Each table whose row-level security phase 5 turns on is recorded ('rls'), so its rollback
-- turns off exactly those, and leaves on what was on before.
DO $$
DECLARE
    item text;
BEGIN
    FOREACH item IN ARRAY ARRAY['orchestration_workflows', 'workflow_executions', 'handover_packages',
                                'integration_events'] LOOP
        IF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass(item)) THEN
            INSERT INTO migration_ledger.created_objects (kind, name, phase)
            VALUES ('rls', item, '5') ON CONFLICT DO NOTHING;
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', item);
        END IF;
    END LOOP;
END
$$;

DROP POLICY IF EXISTS orchestration_client_isolation ON orchestration_workflows;
CREATE POLICY orchestration_client_isolation ON orchestration_workflows
    FOR ALL TO authenticated
    USING (client_id = (SELECT tenant_client_id()))
    WITH CHECK (client_id = (SELECT tenant_client_id()));

DROP POLICY IF EXISTS handover_client_isolation ON handover_packages;
CREATE POLICY handover_client_isolation ON handover_packages
    FOR ALL TO authenticated
    USING (client_id = (SELECT tenant_client_id()))
    WITH CHECK (client_id = (SELECT tenant_client_id()));

-- The subqueries run as the caller, through orchestration_workflows' own policy and
-- module_installations' own privileges and policies: a client derives only from rows it may see.
-- Phase 5 grants authenticated nothing on these two tables (040): the policies decide which rows
-- once an operator grants it something.
DROP POLICY IF EXISTS workflow_executions_client_isolation ON workflow_executions;
CREATE POLICY workflow_executions_client_isolation ON workflow_executions
    FOR ALL TO authenticated
    USING (workflow_id IN (SELECT ow.id FROM orchestration_workflows AS ow
                            WHERE ow.client_id = (SELECT tenant_client_id())))
    WITH CHECK (workflow_id IN (SELECT ow.id FROM orchestration_workflows AS ow
                                 WHERE ow.client_id = (SELECT tenant_client_id())));

DROP POLICY IF EXISTS integration_events_client_isolation ON integration_events;
CREATE POLICY integration_events_client_isolation ON integration_events
    FOR ALL TO authenticated
    USING (correlation_id IN (SELECT mi.id FROM module_installations AS mi
                               WHERE mi.tenant_id = (SELECT tenant_client_id())))
    WITH CHECK (correlation_id IN (SELECT mi.id FROM module_installations AS mi
                                    WHERE mi.tenant_id = (SELECT tenant_client_id())));
