-- Handover packages delivered since the previous sample (since, interval_s seconds
-- ago), per hour, and those ready but not delivered. Rows of (metric, value).
SELECT 'packages_delivered_per_h',
       to_jsonb(round(3600.0 * (SELECT count(*) FROM handover_packages WHERE delivered_at > :'since')
                      / :'interval_s'::numeric, 3))
UNION ALL
SELECT 'packages_ready_backlog', to_jsonb((SELECT count(*) FROM handover_packages WHERE status = 'ready'))
