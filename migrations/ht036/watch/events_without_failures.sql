-- The integration-event metrics of a database migrated before phase 2's 025_event_failures.sql
-- (integration_events has no failed_at): no failure is known, so none is counted.
WITH n AS (SELECT count(*) AS processed FROM integration_events WHERE processed_at > :'since')
SELECT 'events_processed_per_min', to_jsonb(round(60.0 * processed / :'interval_s'::numeric, 3)) FROM n
UNION ALL
SELECT 'event_failure_pct', to_jsonb(CASE WHEN processed > 0 THEN 0.0 END) FROM n
UNION ALL
SELECT 'events_backlog', to_jsonb((SELECT count(*) FROM integration_events
                                    WHERE processed_at IS NULL AND status IN ('pending', 'processing')))
