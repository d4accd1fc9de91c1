-- Phase 3, step 2: link one batch of overrides, run by the backfill in many short transactions:
-- the plan rows planned on heap pages :'lo' (included) to :'hi' (excluded), both tids '(page,0)'.
-- A batch touches a few contiguous pages, so it is quick and its row locks are held briefly.
--
-- Only rows still holding the values recorded in the plan are written: a rerun skips what is
-- done, and a linkage value the application (or the transition's sync, 007) changed meanwhile
-- is left alone - the sync's rows are consistent and recorded in phase3_override_sync.
-- activation_status follows the row's enabled as it is now; where that differs from the plan's
-- new_status, the plan is corrected, so it keeps recording exactly what phase 3 wrote.
--
-- The batch never waits for a row lock: it locks its rows FOR UPDATE SKIP LOCKED, so an
-- application write (and the sync's work inside it) never waits for a batch that waits for
-- it - no deadlock, whatever the order. A row some transaction holds is counted in `skipped`;
-- the backfill comes back to its pages in a later pass (pgmigrate_backfill.py).
--
-- Each override is found where it was planned (a TID lookup); one the application has moved
-- since (an UPDATE writes a new row version elsewhere) is found by its id instead.
-- Returns the rows linked, the plan rows restated and the rows skipped. One statement: the
-- backfill prepares it once and executes it for every batch, :'lo' and :'hi' as its parameters.

WITH batch AS MATERIALIZED (
    SELECT p.override_id, p.planned_ctid, p.module_id, p.installation_id, p.new_status,
           p.old_module_id, p.old_installation_id, p.old_status
      FROM migration_ledger.phase3_override_plan AS p
     WHERE p.planned_ctid >= :'lo'::tid AND p.planned_ctid < :'hi'::tid
), in_place AS MATERIALIZED (
    SELECT b.*
      FROM batch AS b
      JOIN client_app_overrides AS cao ON cao.ctid = b.planned_ctid AND cao.id = b.override_id
     WHERE cao.marketplace_module_id IS NOT DISTINCT FROM b.old_module_id
       AND cao.installation_id IS NOT DISTINCT FROM b.old_installation_id
       AND cao.activation_status IS NOT DISTINCT FROM b.old_status
       FOR UPDATE OF cao SKIP LOCKED
), moved AS MATERIALIZED (
    SELECT b.*
      FROM batch AS b
      JOIN client_app_overrides AS cao ON cao.id = b.override_id
     WHERE b.override_id NOT IN (SELECT override_id FROM in_place)
       AND cao.marketplace_module_id IS NOT DISTINCT FROM b.old_module_id
       AND cao.installation_id IS NOT DISTINCT FROM b.old_installation_id
       AND cao.activation_status IS NOT DISTINCT FROM b.old_status
       FOR UPDATE OF cao SKIP LOCKED
), locked AS (
    SELECT * FROM in_place
    UNION ALL
    SELECT * FROM moved
), linked AS (
    UPDATE client_app_overrides AS cao
       SET marketplace_module_id = l.module_id,
           installation_id = l.installation_id,
           activation_status = CASE WHEN cao.enabled THEN 'active' ELSE 'inactive' END
      FROM locked AS l
     WHERE cao.id = l.override_id
    RETURNING cao.id, cao.activation_status, l.new_status
), restated AS (
    UPDATE migration_ledger.phase3_override_plan AS p
       SET new_status = l.activation_status
      FROM linked AS l
     WHERE l.activation_status <> l.new_status
       AND p.override_id = l.id
    RETURNING p.override_id
)
SELECT (SELECT count(*) FROM linked) AS linked,
       (SELECT count(*) FROM restated) AS restated,
       -- still holding the plan's old values in this statement's snapshot, and not locked by
       -- this batch: another transaction held them (a later pass links them)
       (SELECT count(*) FROM batch AS b JOIN client_app_overrides AS cao ON cao.id = b.override_id
         WHERE b.override_id NOT IN (SELECT override_id FROM locked)
           AND cao.marketplace_module_id IS NOT DISTINCT FROM b.old_module_id
           AND cao.installation_id IS NOT DISTINCT FROM b.old_installation_id
           AND cao.activation_status IS NOT DISTINCT FROM b.old_status) AS skipped;
