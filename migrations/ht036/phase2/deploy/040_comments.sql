-- Phase 2, step 4: the schema's own documentation (strategy 4.1, "update schema documentation"):
-- COMMENT ON the tables and columns phase 2 created. playbooks/review.yml and docs/schema.md
-- are generated from these comments and the catalog, so there is one source. Only what phase 2
-- created (deploy/005 recorded it; a ledger from before that record: all of it) is commented: an
-- adopted table or a column that was already there keeps its own comment, and phase 2's rollback,
-- which drops what it created, takes these comments with it. Catalog only, brief locks.
DO $$
DECLARE
    legacy constant boolean := NOT EXISTS (
        SELECT 1 FROM migration_ledger.created_objects WHERE kind = 'record' AND phase = '2');
    item record;
BEGIN
    FOR item IN
        SELECT * FROM (VALUES
            ('orchestration_workflows', NULL,
             'HT-035 orchestration: one workflow per run of a process for a client; phase 3 creates the '
             'client_onboarding workflow of every client (one per client, uq_ow_client_onboarding). Row-level '
             'security: a tenant sees its own client''s rows.'),
            ('orchestration_workflows', 'id', 'Surrogate key.'),
            ('orchestration_workflows', 'workflow_name', 'Display name, e.g. ''Client Setup - '' || client name.'),
            ('orchestration_workflows', 'workflow_type', 'What the workflow does: client_onboarding, ...'),
            ('orchestration_workflows', 'client_id', 'The client (clients_enhanced.id); deleting the client deletes it.'),
            ('orchestration_workflows', 'workflow_definition', 'The steps, as JSON ({"steps": [...]}).'),
            ('orchestration_workflows', 'status', 'pending, in_progress, completed, failed or cancelled.'),
            ('orchestration_workflows', 'created_at', 'When it was created (phase 3: the client''s created_at).'),
            ('orchestration_workflows', 'updated_at', 'Last change.'),
            ('orchestration_workflows', 'completed_at', 'When it completed; null until then.'),
            ('workflow_executions', NULL,
             'One execution of one step of a workflow; the 48-hour watch''s workflow success rate counts the '
             'succeeded and failed ones by finished_at.'),
            ('workflow_executions', 'id', 'Surrogate key.'),
            ('workflow_executions', 'workflow_id', 'The workflow; deleting the workflow deletes its executions.'),
            ('workflow_executions', 'step_key', 'Which step of the workflow definition ran.'),
            ('workflow_executions', 'status', 'pending, running, succeeded, failed or skipped.'),
            ('workflow_executions', 'started_at', 'When the step started.'),
            ('workflow_executions', 'finished_at', 'When it finished (succeeded or failed).'),
            ('workflow_executions', 'error_message', 'Why it failed; null otherwise.'),
            ('workflow_executions', 'created_at', 'When it was queued.'),
            ('handover_packages', NULL,
             'HT-035 handover: what a client receives once deployed - the installed modules and their '
             'configuration. Phase 3 creates one per client with a deployed deployment. Row-level security: '
             'a tenant sees its own client''s rows.'),
            ('handover_packages', 'id', 'Surrogate key.'),
            ('handover_packages', 'client_id', 'The client; deleting the client deletes its packages.'),
            ('handover_packages', 'workflow_id', 'The workflow that produced it; set to null when that workflow is deleted.'),
            ('handover_packages', 'package_name', 'Display name, e.g. ''Handover Package - '' || client name.'),
            ('handover_packages', 'installed_modules', 'JSON array of the modules installed for the client.'),
            ('handover_packages', 'module_configurations', 'JSON object: each app''s linkage and settings.'),
            ('handover_packages', 'status', 'draft, ready, delivered or archived.'),
            ('handover_packages', 'created_at', 'When it was created.'),
            ('handover_packages', 'updated_at', 'Last change.'),
            ('handover_packages', 'delivered_at', 'When it was delivered; the watch''s delivery rate counts these.'),
            ('integration_events', NULL,
             'The integration event bus between the HT-035 systems; phase 3 records one module_installed '
             'event per installation of the last 7 days. Processing lag: age of the oldest unprocessed event.'),
            ('integration_events', 'id', 'Surrogate key.'),
            ('integration_events', 'event_type', 'What happened, e.g. module_installed.'),
            ('integration_events', 'event_source', 'Which system emitted it, e.g. modules.'),
            ('integration_events', 'event_payload', 'The event''s data, as JSON.'),
            ('integration_events', 'correlation_id', 'The source row (an installation id for module_installed).'),
            ('integration_events', 'status', 'pending, processing, processed or failed.'),
            ('integration_events', 'created_at', 'When it was emitted.'),
            ('integration_events', 'processed_at', 'When it was processed; null while pending (the lag metric).'),
            ('integration_events', 'failed_at', 'When processing failed; null otherwise (the watch''s failure rate).'),
            ('integration_events', 'error_message', 'Why processing failed (the watch''s error types).')
        ) AS t(tbl, col, note)
    LOOP
        IF to_regclass(item.tbl) IS NOT NULL AND (legacy OR EXISTS (
                SELECT 1 FROM migration_ledger.created_objects WHERE kind = 'table' AND name = item.tbl)) THEN
            IF item.col IS NULL THEN
                EXECUTE format('COMMENT ON TABLE %I IS %L', item.tbl, item.note);
            ELSE
                EXECUTE format('COMMENT ON COLUMN %I.%I IS %L', item.tbl, item.col, item.note);
            END IF;
        END IF;
    END LOOP;
    -- The four columns phase 2 added to the application's table, each only where phase 2 added it.
    FOR item IN
        SELECT * FROM (VALUES
            ('marketplace_module_id',
             'The marketplace module this override configures (phase 3 links it by app_name); fk_cao_marketplace_module '
             'ON DELETE SET NULL: deleting the module unlinks the override.'),
            ('installation_id',
             'The client''s installation of that module; fk_cao_installation ON DELETE CASCADE: deleting the '
             'installation DELETES THIS OVERRIDE (the client''s setting) with it.'),
            ('activation_status',
             'active or inactive (from enabled, set by phase 3), pending where no marketplace module matches.'),
            ('activation_metadata', 'Activation details, as JSON; {} by default.')
        ) AS t(col, note)
    LOOP
        IF legacy OR EXISTS (SELECT 1 FROM migration_ledger.created_objects
                              WHERE kind = 'column' AND name = 'client_app_overrides.' || item.col) THEN
            EXECUTE format('COMMENT ON COLUMN client_app_overrides.%I IS %L', item.col, item.note);
        END IF;
    END LOOP;
END
$$;
