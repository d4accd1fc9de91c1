-- Phase 3, step 5: one module_installed event per installation of the last 7 days. The cutoff
-- is fixed once per run (:'events_since') and recorded in the ledger, so the validator checks
-- against the same window. Guarded: an installation that already has a module_installed event
-- gets no second one. The installation's status is ours, not the strategy's: read from the row
-- as JSON, so a module_installations without that column gives "status": null.
WITH inserted AS (
    INSERT INTO integration_events (event_type, event_source, event_payload, correlation_id)
    SELECT 'module_installed',
           'modules',
           jsonb_build_object('installation_id', mi.id, 'module_id', mi.module_id,
                              'tenant_id', mi.tenant_id, 'installed_at', mi.installed_at,
                              'status', to_jsonb(mi) -> 'status'),
           mi.id
      FROM module_installations mi
     WHERE mi.installed_at >= :'events_since'::timestamptz
       AND NOT EXISTS (SELECT 1 FROM integration_events e
                        WHERE e.correlation_id = mi.id AND e.event_type = 'module_installed')
    RETURNING id
)
INSERT INTO migration_ledger.phase3_inserted (table_name, row_id)
SELECT 'integration_events', id FROM inserted;
