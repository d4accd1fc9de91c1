-- Phase 3, step 2: link one batch of overrides, run by the backfill in many short transactions:
-- the plan rows planned on heap pages :'lo' (included) to :'hi' (excluded), both tids '(page,0)'.
-- A batch touches a few contiguous pages, so it is quick and its row locks are held briefly.
--
-- Only rows still holding the values recorded in the plan are written: a rerun skips what is
-- done, and a linkage value the application changed meanwhile is left alone. activation_status
-- follows the row's enabled as it is now (the application may have flipped it since the plan
-- was made); where that differs from the plan's new_status, the plan is corrected, so it keeps
-- recording exactly what phase 3 wrote.
--
-- Each override is found where it was planned (a TID lookup); one the application has moved
-- since (an UPDATE writes a new row version elsewhere) is found by its id instead.
-- Returns the rows linked and the plan rows restated. One statement: the backfill prepares it
-- once and executes it for every batch, :'lo' and :'hi' as its parameters.

WITH batch AS MATERIALIZED (
    SELECT p.override_id, p.planned_ctid, p.module_id, p.installation_id, p.new_status,
           p.old_module_id, p.old_installation_id, p.old_status
      FROM migration_ledger.phase3_override_plan AS p
     WHERE p.planned_ctid >= :'lo'::tid AND p.planned_ctid < :'hi'::tid
), in_place AS (
    UPDATE client_app_overrides AS cao
       SET marketplace_module_id = b.module_id,
           installation_id = b.installation_id,
           activation_status = CASE WHEN cao.enabled THEN 'active' ELSE 'inactive' END
      FROM batch AS b
     WHERE cao.ctid = b.planned_ctid
       AND cao.id = b.override_id
       AND cao.marketplace_module_id IS NOT DISTINCT FROM b.old_module_id
       AND cao.installation_id IS NOT DISTINCT FROM b.old_installation_id
       AND cao.activation_status IS NOT DISTINCT FROM b.old_status
    RETURNING cao.id, cao.activation_status, b.new_status
), moved AS (
    UPDATE client_app_overrides AS cao
       SET marketplace_module_id = b.module_id,
           installation_id = b.installation_id,
           activation_status = CASE WHEN cao.enabled THEN 'active' ELSE 'inactive' END
      FROM batch AS b
     WHERE b.override_id NOT IN (SELECT id FROM in_place)
       AND cao.id = b.override_id
       AND cao.marketplace_module_id IS NOT DISTINCT FROM b.old_module_id
       AND cao.installation_id IS NOT DISTINCT FROM b.old_installation_id
       AND cao.activation_status IS NOT DISTINCT FROM b.old_status
    RETURNING cao.id, cao.activation_status, b.new_status
), linked AS (
    SELECT * FROM in_place
    UNION ALL
    SELECT * FROM moved
), restated AS (
    UPDATE migration_ledger.phase3_override_plan AS p
       SET new_status = l.activation_status
      FROM linked AS l
     WHERE l.activation_status <> l.new_status
       AND p.override_id = l.id
    RETURNING p.override_id
)
SELECT (SELECT count(*) FROM linked) AS linked,
       (SELECT count(*) FROM restated) AS restated;
