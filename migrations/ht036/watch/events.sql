-- The watch's integration-event metrics over the interval since the previous sample
-- (since, interval_s seconds long): processed per minute, failed as a share of the
-- finished, and the backlog still waiting. Rows of (metric, value), the values jsonb (numbers
-- as they are: a count stays an integer).
WITH n AS (
    SELECT (SELECT count(*) FROM integration_events WHERE processed_at > :'since') AS processed,
           (SELECT count(*) FROM integration_events WHERE failed_at > :'since') AS failed)
SELECT 'events_processed_per_min', to_jsonb(round(60.0 * processed / :'interval_s'::numeric, 3)) FROM n
UNION ALL
SELECT 'event_failure_pct', to_jsonb(CASE WHEN processed + failed > 0
                                          THEN round(100.0 * failed / (processed + failed), 2) END) FROM n
UNION ALL
SELECT 'events_backlog', to_jsonb((SELECT count(*) FROM integration_events
                                    WHERE processed_at IS NULL AND status IN ('pending', 'processing')))
