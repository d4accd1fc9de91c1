-- pgmigrate: no-transaction
-- Post-migration cleanup (strategy 4.1 step 2): VACUUM ANALYZE the new tables. VACUUM cannot
-- run in a transaction block; it takes SHARE UPDATE EXCLUSIVE, which lets reads and writes on.
VACUUM ANALYZE orchestration_workflows;
VACUUM ANALYZE workflow_executions;
VACUUM ANALYZE handover_packages;
VACUUM ANALYZE integration_events;
