-- What the strategy's delete rules will do to the application's data (the briefing, read
-- before phase 1): the rule on the overrides' installation link where it exists already, the
-- overrides phase 3 would link to an installation (its join, without the ambiguity rules: each
-- of these is deleted with its installation once fk_cao_installation exists), and all of them.
-- Rows of (name, value), the values jsonb (text and counts in one column); a name starting
-- with _ is for the briefing's text only.
WITH fk AS (
    SELECT CASE confdeltype WHEN 'c' THEN 'ON DELETE CASCADE' WHEN 'n' THEN 'ON DELETE SET NULL'
                            WHEN 'a' THEN 'NO ACTION' WHEN 'r' THEN 'RESTRICT' WHEN 'd' THEN 'SET DEFAULT'
                            ELSE confdeltype::text END AS rule
      FROM pg_constraint
     WHERE conname = 'fk_cao_installation' AND conrelid = to_regclass('client_app_overrides'))
SELECT 'fk_cao_installation', to_jsonb((SELECT rule FROM fk))
UNION ALL
SELECT 'overrides_linkable_to_installation',
       to_jsonb((SELECT count(DISTINCT o.id) FROM client_app_overrides o
                   JOIN marketplace_modules m ON m.name = o.app_name
                   JOIN module_installations i ON i.module_id = m.id AND i.tenant_id = o.client_id))
UNION ALL
SELECT 'overrides', to_jsonb((SELECT count(*) FROM client_app_overrides))
UNION ALL
SELECT '_present_now', to_jsonb(coalesce('; present now: ' || (SELECT rule FROM fk), ''))
