-- What failed since the previous sample (since): workflow steps by key. Rows of
-- (error type, count), the most frequent first.
SELECT 'workflow step ' || step_key, count(*) FROM workflow_executions
 WHERE finished_at > :'since' AND status = 'failed' GROUP BY step_key ORDER BY 2 DESC
