-- Phase 5, step 4: the strategy's grants, plus read access to handover packages (their policy
-- exists so clients can read their own). The dashboard view is safe to grant: it filters by
-- the tenant rule (020_views.sql).
GRANT SELECT, INSERT, UPDATE, DELETE ON orchestration_workflows TO authenticated;
GRANT SELECT ON handover_packages TO authenticated;
GRANT SELECT ON unified_client_dashboard TO authenticated;
GRANT EXECUTE ON FUNCTION tenant_client_id(), tenant_sees_all() TO authenticated;
