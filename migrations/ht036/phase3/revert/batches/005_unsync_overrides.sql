-- pgmigrate: needs=migration_ledger.phase3_override_sync
-- Rollback of the transition's sync, one batch (run until it takes no row, before the plan's
-- batches, 010): take up to :batch_size overrides the sync wrote, and put every one that still
-- holds what the sync wrote last back to what it held before the migration first wrote it -
-- the plan's old values where phase 3 planned it too (the plan was taken first), else the
-- values before the sync's first write. Their plan rows go with them, so 010 leaves them be.
-- An override written since by anybody else (the next application version, after the
-- cutover) keeps its values. The sync is already gone (first/010): nothing derives them again.
WITH batch AS (
    DELETE FROM migration_ledger.phase3_override_sync
     WHERE override_id IN (SELECT override_id FROM migration_ledger.phase3_override_sync
                            ORDER BY override_id LIMIT :batch_size)
    RETURNING *
),
planned AS (
    DELETE FROM migration_ledger.phase3_override_plan AS p
     USING batch AS b
     WHERE p.override_id = b.override_id
    RETURNING p.override_id, p.old_module_id, p.old_installation_id, p.old_status
),
target AS (
    SELECT b.override_id, b.module_id, b.installation_id, b.new_status,
           CASE WHEN p.override_id IS NULL THEN b.old_module_id ELSE p.old_module_id END AS orig_module_id,
           CASE WHEN p.override_id IS NULL THEN b.old_installation_id ELSE p.old_installation_id END AS orig_installation_id,
           CASE WHEN p.override_id IS NULL THEN b.old_status ELSE p.old_status END AS orig_status
      FROM batch AS b LEFT JOIN planned AS p ON p.override_id = b.override_id
),
reset AS (
    UPDATE client_app_overrides AS cao
       SET marketplace_module_id = t.orig_module_id,
           installation_id = t.orig_installation_id,
           activation_status = t.orig_status
      FROM target AS t
     WHERE cao.id = t.override_id
       AND cao.marketplace_module_id IS NOT DISTINCT FROM t.module_id
       AND cao.installation_id IS NOT DISTINCT FROM t.installation_id
       AND cao.activation_status IS NOT DISTINCT FROM t.new_status
       AND (t.orig_module_id, t.orig_installation_id, t.orig_status)
           IS DISTINCT FROM (t.module_id, t.installation_id, t.new_status)
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS taken,
       (SELECT count(*) FROM reset) AS reset,
       (SELECT count(*) FROM target AS t JOIN client_app_overrides AS cao ON cao.id = t.override_id
         WHERE (cao.marketplace_module_id, cao.installation_id, cao.activation_status)
               IS DISTINCT FROM (t.module_id, t.installation_id, t.new_status)
           AND (cao.marketplace_module_id, cao.installation_id, cao.activation_status)
               IS DISTINCT FROM (t.orig_module_id, t.orig_installation_id, t.orig_status)) AS kept;
