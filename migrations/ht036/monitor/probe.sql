-- The monitoring probe: the application's read of its clients and their overrides, timed the
-- same way for the baseline and every later sample (its p95 is the strategy's "performance",
-- 5.1) and between the throttled batches. Read-only; on tables that exist before and after.
SELECT c.id, count(o.id) FROM clients_enhanced c LEFT JOIN client_app_overrides o ON o.client_id = c.id GROUP BY c.id ORDER BY c.id LIMIT 50
