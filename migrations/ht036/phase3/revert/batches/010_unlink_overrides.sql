-- pgmigrate: needs=migration_ledger.phase3_override_plan
-- Rollback of phase 3, one batch (run again and again, each in its own short transaction, until
-- it takes no row): take up to :batch_size rows of the linkage plan, put every override that
-- still holds the values phase 3 wrote back to the values it held before, and forget those plan
-- rows. An override the application changed since (any of the three columns) keeps its values:
-- the application's write wins, as it does during the backfill. The value test sits in the
-- UPDATE itself, so a concurrent application write is re-checked, never overwritten. A batch
-- holds its row locks for one short transaction; a rerun after an interruption goes on with the
-- rows still planned.
WITH batch AS (
    DELETE FROM migration_ledger.phase3_override_plan
     WHERE override_id IN (SELECT override_id FROM migration_ledger.phase3_override_plan
                            ORDER BY override_id LIMIT :batch_size)
    RETURNING *
),
reset AS (
    UPDATE client_app_overrides AS cao
       SET marketplace_module_id = b.old_module_id,
           installation_id = b.old_installation_id,
           activation_status = b.old_status
      FROM batch AS b
     WHERE cao.id = b.override_id
       AND cao.marketplace_module_id IS NOT DISTINCT FROM b.module_id
       AND cao.installation_id IS NOT DISTINCT FROM b.installation_id
       AND cao.activation_status IS NOT DISTINCT FROM b.new_status
       AND (b.old_module_id, b.old_installation_id, b.old_status)
           IS DISTINCT FROM (b.module_id, b.installation_id, b.new_status)
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS taken,
       (SELECT count(*) FROM reset) AS reset,
       -- changed by the application since phase 3: holds neither what phase 3 wrote nor what
       -- was there before (counted in the statement's snapshot, for the report)
       (SELECT count(*) FROM batch AS b JOIN client_app_overrides AS cao ON cao.id = b.override_id
         WHERE (cao.marketplace_module_id, cao.installation_id, cao.activation_status)
               IS DISTINCT FROM (b.module_id, b.installation_id, b.new_status)
           AND (cao.marketplace_module_id, cao.installation_id, cao.activation_status)
               IS DISTINCT FROM (b.old_module_id, b.old_installation_id, b.old_status)) AS kept;
