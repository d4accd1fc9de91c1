-- Phase 5, step 3: row-level security on the two tenant tables, with the strategy's policy
-- names. authenticated reads and writes only its own client's rows.
ALTER TABLE orchestration_workflows ENABLE ROW LEVEL SECURITY;
ALTER TABLE handover_packages ENABLE ROW LEVEL SECURITY;

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
