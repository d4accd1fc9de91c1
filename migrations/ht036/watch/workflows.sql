-- Workflow executions finished since the previous sample (since): the success rate, and
-- how many finished (a detail of the sample). Rows of (metric, value).
WITH n AS (
    SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'failed') AS failed
      FROM workflow_executions
     WHERE finished_at > :'since' AND status IN ('succeeded', 'failed'))
SELECT 'workflow_success_pct', to_jsonb(CASE WHEN succeeded + failed > 0
                                             THEN round(100.0 * succeeded / (succeeded + failed), 2) END) FROM n
UNION ALL
SELECT 'executions_finished', to_jsonb(succeeded + failed) FROM n
