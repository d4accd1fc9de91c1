-- pgmigrate: batches
-- Phase 3, step 5: one module_installed event per installation of the last 7 days. The cutoff
-- is fixed once per run (:'events_since') and recorded in the ledger, so the validator checks
-- against the same window. Guarded: an installation that already has a module_installed event
-- gets no second one. The event itself is defined once (005, phase3_installed_event): the
-- transition's drain inserts the same for every installation recorded after 007. The
-- installation's status is ours, not the strategy's: read from the row as JSON, so a
-- module_installations without that column gives "status": null.
--
-- One batch of installations in id order (as 030 walks the clients): from :'from' on, at most
-- :batch_size installations; the guard is a probe of the installation's key, as in 030 (OFFSET
-- 0). As one statement, the guard was planned once against an integration_events that a VACUUM
-- or ANALYZE since phase 2 had recorded as empty: a nested loop scanning the table per
-- installation while the statement filled it - 290,000 events not inserted after 12 minutes.
WITH batch AS (
    SELECT mi.id, mi.module_id, mi.tenant_id, mi.installed_at, to_jsonb(mi) ->> 'status' AS status
      FROM module_installations mi
     WHERE mi.id >= :'from'::uuid
     ORDER BY mi.id
     LIMIT :batch_size
),
inserted AS (
    INSERT INTO integration_events (event_type, event_source, event_payload, correlation_id)
    SELECT ev.event_type, ev.event_source, ev.event_payload, ev.correlation_id
      FROM batch mi
     CROSS JOIN LATERAL migration_ledger.phase3_installed_event(
               mi.id, mi.module_id, mi.tenant_id, mi.installed_at, mi.status) AS ev
     WHERE mi.installed_at >= :'events_since'::timestamptz
       AND NOT EXISTS (SELECT 1 FROM integration_events e
                        WHERE e.correlation_id = mi.id AND e.event_type = 'module_installed' OFFSET 0)
       -- An installation recorded since the transition opened has its event from the drain,
       -- which may be inserting it now: its queue entry is committed with the installation and
       -- deleted with the event, so this snapshot sees the entry, or the event, or neither
       -- (installed before the transition opened: this step's).
       AND NOT EXISTS (SELECT 1 FROM migration_ledger.transition_queue q WHERE q.installation_id = mi.id)
    RETURNING id
),
recorded AS (
    INSERT INTO migration_ledger.phase3_inserted (table_name, row_id)
    SELECT 'integration_events', id FROM inserted
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS taken,
       (SELECT id::text FROM batch ORDER BY id DESC LIMIT 1) AS last,
       (SELECT count(*) FROM recorded) AS rows;
