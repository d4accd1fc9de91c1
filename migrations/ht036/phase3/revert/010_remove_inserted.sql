-- Rollback of phase 3 (strategy 3.3 and 5.2, made precise): delete exactly the rows phase 3
-- inserted, by the ids it recorded in migration_ledger.phase3_inserted, never by date (phase 3
-- dates each workflow with its client's creation time, so "created_at >= migration start" would
-- miss them, and would take rows the application created since). Then forget the record and the
-- linkage plan, so a rerun of phase 3 plans and inserts as the first run did.
-- Before this, first/ removed the transition's sync and the batches (revert/batches/) put the
-- overrides back one short transaction at a time; whatever sync and plan rows are left are
-- reset here (the transition's sync records first: where phase 3 planned an override too, the
-- plan's old values are the ones from before the migration).
-- :'phase2_follows' is true when phase 2 is rolled back in the same transaction right after: the
-- tables and columns phase 2 created go then with all their rows, so their rows are not touched
-- here (no work, no row locks) - only what phase 2 keeps (adopted tables, columns that were
-- there before) is cleaned one by one.
DO $$
DECLARE
    phase2_follows constant boolean := :'phase2_follows';
    legacy constant boolean := NOT EXISTS (
        SELECT 1 FROM migration_ledger.created_objects WHERE kind = 'record' AND phase = '2');
    item text;
    n bigint;
BEGIN
    IF to_regclass('migration_ledger.phase3_override_plan') IS NOT NULL THEN
        IF NOT (phase2_follows AND (legacy OR (
                SELECT count(*) FROM migration_ledger.created_objects
                 WHERE kind = 'column'
                   AND name IN ('client_app_overrides.marketplace_module_id',
                                'client_app_overrides.installation_id',
                                'client_app_overrides.activation_status')) = 3)) THEN
            -- What the transition's sync wrote (as revert/batches/005 does, for what is left).
            IF to_regclass('migration_ledger.phase3_override_sync') IS NOT NULL THEN
                UPDATE client_app_overrides AS cao
                   SET marketplace_module_id = t.orig_module_id,
                       installation_id = t.orig_installation_id,
                       activation_status = t.orig_status
                  FROM (SELECT s.override_id, s.module_id, s.installation_id, s.new_status,
                               CASE WHEN p.override_id IS NULL THEN s.old_module_id ELSE p.old_module_id END AS orig_module_id,
                               CASE WHEN p.override_id IS NULL THEN s.old_installation_id ELSE p.old_installation_id END AS orig_installation_id,
                               CASE WHEN p.override_id IS NULL THEN s.old_status ELSE p.old_status END AS orig_status
                          FROM migration_ledger.phase3_override_sync AS s
                          LEFT JOIN migration_ledger.phase3_override_plan AS p ON p.override_id = s.override_id) AS t
                 WHERE cao.id = t.override_id
                   AND cao.marketplace_module_id IS NOT DISTINCT FROM t.module_id
                   AND cao.installation_id IS NOT DISTINCT FROM t.installation_id
                   AND cao.activation_status IS NOT DISTINCT FROM t.new_status
                   AND (t.orig_module_id, t.orig_installation_id, t.orig_status)
                       IS DISTINCT FROM (t.module_id, t.installation_id, t.new_status);
                GET DIAGNOSTICS n = ROW_COUNT;
                RAISE NOTICE 'pgmigrate: synced_overrides_reset=%', n;
                DELETE FROM migration_ledger.phase3_override_plan AS p
                 USING migration_ledger.phase3_override_sync AS s WHERE s.override_id = p.override_id;
            END IF;
            UPDATE client_app_overrides AS cao
               SET marketplace_module_id = p.old_module_id,
                   installation_id = p.old_installation_id,
                   activation_status = p.old_status
              FROM migration_ledger.phase3_override_plan AS p
             WHERE cao.id = p.override_id
               AND cao.marketplace_module_id IS NOT DISTINCT FROM p.module_id
               AND cao.installation_id IS NOT DISTINCT FROM p.installation_id
               AND cao.activation_status IS NOT DISTINCT FROM p.new_status
               AND (p.old_module_id, p.old_installation_id, p.old_status)
                   IS DISTINCT FROM (p.module_id, p.installation_id, p.new_status);
            GET DIAGNOSTICS n = ROW_COUNT;
            RAISE NOTICE 'pgmigrate: overrides_reset=%', n;
        END IF;
        -- TRUNCATE: the migration's own table, read by nobody else; instant at any size, where
        -- a DELETE would keep a full rollback's transaction (and its locks) open while it runs.
        TRUNCATE migration_ledger.phase3_override_plan;
    END IF;
    IF to_regclass('migration_ledger.phase3_override_sync') IS NOT NULL THEN
        TRUNCATE migration_ledger.phase3_override_sync;
    END IF;
    -- The transition's queue and log: revert/005 applied or discarded every entry and folded the
    -- log (both empty then); what a phase 2 rolled back in the same transaction leaves goes too.
    IF to_regclass('migration_ledger.transition_queue') IS NOT NULL THEN
        TRUNCATE migration_ledger.transition_queue;
    END IF;
    IF to_regclass('migration_ledger.phase3_override_sync_log') IS NOT NULL THEN
        TRUNCATE migration_ledger.phase3_override_sync_log;
    END IF;

    -- Executions the application attached to our workflows go with them (ON DELETE CASCADE).
    IF to_regclass('workflow_executions') IS NOT NULL AND to_regclass('orchestration_workflows') IS NOT NULL
       AND NOT (phase2_follows AND (legacy OR EXISTS (
                SELECT 1 FROM migration_ledger.created_objects
                 WHERE kind = 'table' AND name = 'workflow_executions'))) THEN
        SELECT count(*) INTO n FROM workflow_executions
         WHERE workflow_id IN (SELECT row_id FROM migration_ledger.phase3_inserted
                                WHERE table_name = 'orchestration_workflows');
        RAISE NOTICE 'pgmigrate: workflow_executions_deleted=%', n;
    END IF;
    -- Packages first: they point at the workflows.
    FOREACH item IN ARRAY ARRAY['handover_packages', 'integration_events', 'orchestration_workflows'] LOOP
        IF to_regclass(item) IS NOT NULL AND NOT (phase2_follows AND (legacy OR EXISTS (
                SELECT 1 FROM migration_ledger.created_objects
                 WHERE kind = 'table' AND name = item))) THEN
            EXECUTE format('DELETE FROM %I WHERE id IN (SELECT row_id FROM migration_ledger.phase3_inserted '
                           'WHERE table_name = %L)', item, item);
            GET DIAGNOSTICS n = ROW_COUNT;
            RAISE NOTICE 'pgmigrate: %_deleted=%', item, n;
        END IF;
    END LOOP;
    SELECT count(*) INTO n FROM migration_ledger.phase3_inserted;
    TRUNCATE migration_ledger.phase3_inserted;
    IF phase2_follows THEN
        RAISE NOTICE 'pgmigrate: done=cleared the linkage plan and the record of % inserted rows; the rows '
                     'and the linkage go with the tables and columns phase 2 drops', n;
    END IF;
END
$$;
