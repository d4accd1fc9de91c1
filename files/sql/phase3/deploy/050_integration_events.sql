-- Phase 3, step 5: one module_installed event per installation of the last 7 days. The cutoff
-- is fixed once per run (:'events_since') and recorded in the ledger, so the validator checks
-- against the same window. Guarded: an installation that already has a module_installed event
-- gets no second one. The event itself is defined once (005, phase3_installed_event): the
-- transition's sync inserts the same for every installation recorded after the plan. The
-- installation's status is ours, not the strategy's: read from the row as JSON, so a
-- module_installations without that column gives "status": null.
WITH inserted AS (
    INSERT INTO integration_events (event_type, event_source, event_payload, correlation_id)
    SELECT ev.event_type, ev.event_source, ev.event_payload, ev.correlation_id
      FROM module_installations mi
     CROSS JOIN LATERAL migration_ledger.phase3_installed_event(
               mi.id, mi.module_id, mi.tenant_id, mi.installed_at, to_jsonb(mi) ->> 'status') AS ev
     WHERE mi.installed_at >= :'events_since'::timestamptz
       AND NOT EXISTS (SELECT 1 FROM integration_events e
                        WHERE e.correlation_id = mi.id AND e.event_type = 'module_installed')
    RETURNING id
)
INSERT INTO migration_ledger.phase3_inserted (table_name, row_id)
SELECT 'integration_events', id FROM inserted;
