-- What failed since the previous sample (since): integration events by type. Rows of
-- (error type, count), the most frequent first.
SELECT 'event ' || event_type, count(*) FROM integration_events
 WHERE failed_at > :'since' GROUP BY event_type ORDER BY 2 DESC
