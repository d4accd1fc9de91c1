-- Read-only: the latest transition (status.yml, complete.yml) and whether its sync is in
-- place. No row when phase 3 never opened one. Read after a finalize too.
SELECT t.id, t.opened_at, t.events_since, t.completed_at, t.completed_by, t.rolled_back_at,
       CASE WHEN t.completed_at IS NOT NULL THEN 'completed'
            WHEN t.rolled_back_at IS NOT NULL THEN 'rolled back'
            ELSE 'open' END AS state,
       (SELECT count(*) FROM pg_trigger tg
         WHERE NOT tg.tgisinternal AND tg.tgname LIKE 'pgmigrate\_transition\_%') AS triggers,
       (SELECT count(*) FROM pg_proc p
         WHERE p.pronamespace = 'migration_ledger'::regnamespace
           AND (p.proname LIKE 'transition\_%' OR p.proname LIKE 'phase3\_%')) AS functions,
       -- the linkage rule's two sets (phase3/deploy/005), views since they may not be functions
       -- without a fixed search_path
       (SELECT count(*) FROM pg_class c
         WHERE c.relnamespace = 'migration_ledger'::regnamespace AND c.relkind = 'v'
           AND c.relname LIKE 'phase3\_%') AS views,
       -- false once cleanup.yml's finalize dropped the sync's records; the caller counts them only
       -- when present (a table that may be gone cannot be named in this query, and query_to_xml
       -- would need a server built with libxml, which some are not).
       to_regclass('migration_ledger.phase3_override_sync') IS NOT NULL AS sync_records
  FROM migration_ledger.transition t
 ORDER BY t.id DESC
 LIMIT 1;
