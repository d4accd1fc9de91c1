-- Phase 6: the strategy's cross-system queries (3.6 step 2), timed repeatedly for the p95 target.
SELECT * FROM unified_client_dashboard LIMIT 10;

SELECT * FROM module_integration_view LIMIT 10;

SELECT * FROM workflow_progress_view WHERE workflow_status = 'in_progress';
