-- Rollback of phase 2 (strategy 3.2 and 5.1 steps 3-4): drop the tables, indexes and columns
-- phase 2 created, and nothing it found already there (deploy/005 recorded which; a ledger from
-- before that record falls back to the strategy's rule: all of them).
-- RESTRICT, not the strategy's CASCADE: CASCADE would silently drop the application's own views
-- or foreign keys built on our objects since; the rollback's plan names them and refuses
-- instead. Dropping a column drops its indexes and phase 4's foreign keys with it.
-- One transaction: ACCESS EXCLUSIVE on each table for milliseconds (catalog changes only; the
-- dropped columns' space is reused by later updates), taken under the runner's lock_timeout.
-- Dropping the tables and columns locks them, and clients_enhanced (their foreign keys); an
-- autovacuum holding one of them is cancelled by the runner after a lock timeout (pgmigrate.py).
DO $$
DECLARE
    legacy constant boolean := NOT EXISTS (
        SELECT 1 FROM migration_ledger.created_objects WHERE kind = 'record' AND phase = '2');
    item text;
    dropped text[] := '{}';
    columns text[] := '{}';
BEGIN
    -- Children first: workflow_executions and handover_packages reference orchestration_workflows.
    FOREACH item IN ARRAY ARRAY['integration_events', 'handover_packages', 'workflow_executions',
                                'orchestration_workflows'] LOOP
        IF to_regclass(item) IS NOT NULL AND (legacy OR EXISTS (
                SELECT 1 FROM migration_ledger.created_objects
                 WHERE kind = 'table' AND name = item)) THEN
            EXECUTE format('DROP TABLE %I', item);
            dropped := dropped || item;
        END IF;
    END LOOP;
    FOREACH item IN ARRAY ARRAY['idx_cao_marketplace_module', 'idx_cao_installation', 'idx_mm_name'] LOOP
        IF to_regclass(item) IS NOT NULL AND (legacy OR EXISTS (
                SELECT 1 FROM migration_ledger.created_objects
                 WHERE kind = 'index' AND name = item)) THEN
            EXECUTE format('DROP INDEX %I', item);
            dropped := dropped || item;
        END IF;
    END LOOP;
    FOREACH item IN ARRAY ARRAY['marketplace_module_id', 'installation_id', 'activation_status',
                                'activation_metadata'] LOOP
        IF EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = 'client_app_overrides'::regclass
                      AND a.attname = item AND NOT a.attisdropped)
           AND (legacy OR EXISTS (SELECT 1 FROM migration_ledger.created_objects
                                   WHERE kind = 'column'
                                     AND name = 'client_app_overrides.' || item)) THEN
            columns := columns || format('DROP COLUMN %I', item);
            dropped := dropped || ('client_app_overrides.' || item);
        END IF;
    END LOOP;
    -- One ALTER for the columns: one lock.
    IF cardinality(columns) > 0 THEN
        EXECUTE 'ALTER TABLE client_app_overrides ' || array_to_string(columns, ', ');
    END IF;
    DELETE FROM migration_ledger.created_objects WHERE phase = '2';
    RAISE NOTICE 'pgmigrate: dropped=%', array_to_string(dropped, ', ');
    IF legacy THEN
        RAISE NOTICE 'pgmigrate: note=phase 2 left no record of what it created (a ledger from '
                     'before that record): dropped every object phase 2 creates';
    END IF;
END
$$;
