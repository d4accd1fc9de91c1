-- Event processing lag (4.2): the age in seconds of the oldest event still waiting; null when
-- none waits (reported as 0).
SELECT extract(epoch FROM clock_timestamp() - min(created_at))
  FROM integration_events
 WHERE processed_at IS NULL AND status IN ('pending', 'processing')
