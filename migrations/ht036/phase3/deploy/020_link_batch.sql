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
-- since (an UPDATE writes a new row version elsewhere) is found by its id instead. It is then
-- locked and written where it was found (TID lookups again: no index is read twice).
-- Returns the rows linked, the plan rows restated and the rows skipped. One statement: the
-- backfill prepares it once and executes it for every batch, :'lo' and :'hi' as its parameters.

WITH batch AS MATERIALIZED (
    SELECT p.override_id, p.planned_ctid, p.module_id, p.installation_id, p.new_status,
           p.old_module_id, p.old_installation_id, p.old_status
      FROM migration_ledger.phase3_override_plan AS p
     WHERE p.planned_ctid >= :'lo'::tid AND p.planned_ctid < :'hi'::tid
), found AS MATERIALIZED (
    -- the plan's overrides still holding the values the plan recorded, where they are now:
    -- per override, the row where it was planned if it is still there, else by its id (LIMIT
    -- 1 stops the Append at the first branch that finds it). One lookup per override, whatever
    -- the plan the planner picks: a join of the batch against a union of both lookups was
    -- planned as a nested loop re-reading the union per override (540 overrides: 291,600
    -- comparisons, half a second).
    SELECT b.*, w.at
      FROM batch AS b
     CROSS JOIN LATERAL (
            SELECT cao.ctid AS at, cao.marketplace_module_id, cao.installation_id, cao.activation_status
              FROM client_app_overrides AS cao
             WHERE cao.ctid = b.planned_ctid AND cao.id = b.override_id
            UNION ALL
            SELECT cao.ctid, cao.marketplace_module_id, cao.installation_id, cao.activation_status
              FROM client_app_overrides AS cao
             WHERE cao.id = b.override_id
             LIMIT 1) AS w
     WHERE w.marketplace_module_id IS NOT DISTINCT FROM b.old_module_id
       AND w.installation_id IS NOT DISTINCT FROM b.old_installation_id
       AND w.activation_status IS NOT DISTINCT FROM b.old_status
), locked AS MATERIALIZED (
    -- A row some transaction holds is skipped; one changed since this statement's snapshot
    -- (its newest version is elsewhere) too: both are seen again in a later pass.
    SELECT f.*
      FROM found AS f
      JOIN client_app_overrides AS cao ON cao.ctid = f.at AND cao.id = f.override_id
       FOR UPDATE OF cao SKIP LOCKED
), linked AS (
    UPDATE client_app_overrides AS cao
       SET marketplace_module_id = l.module_id,
           installation_id = l.installation_id,
           activation_status = CASE WHEN cao.enabled THEN 'active' ELSE 'inactive' END
      FROM locked AS l
     WHERE cao.ctid = l.at AND cao.id = l.override_id
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
       (SELECT count(*) FROM found) - (SELECT count(*) FROM locked) AS skipped;
