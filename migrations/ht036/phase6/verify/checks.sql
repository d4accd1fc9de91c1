-- Phase 6: the data integrity validator (the strategy's TypeScript validator, as SQL).
-- Each statement returns rows of (check, passed, observed, expected); pgmigrate_validate runs
-- them all, read-only, in one REPEATABLE READ snapshot, and writes the JSON report.
-- :'events_since' is the cutoff phase 3 recorded in the ledger; :'queue_drained_since' when the
-- drain before this validation began (infinity: none ran).
--
-- What today's application's writes derive in other rows is consistent once the transition's
-- queue is drained (docs/transition.md): transition.queue_drained fails when anything queued
-- before that drain is left, and the checks of what the queue derives (the events, and the
-- linkage a listing's change moves) leave out only what was queued since, still pending.

SELECT 'schema.columns' AS check, count(*) = 4 AS passed, count(*)::text AS observed, '4' AS expected
  FROM information_schema.columns
 WHERE table_schema = current_schema() AND table_name = 'client_app_overrides'
   AND column_name IN ('marketplace_module_id', 'installation_id', 'activation_status', 'activation_metadata');

SELECT 'schema.tables', count(*) = 4, count(*)::text, '4'
  FROM information_schema.tables
 WHERE table_schema = current_schema()
   AND table_name IN ('orchestration_workflows', 'workflow_executions', 'handover_packages', 'integration_events');

SELECT 'schema.indexes_valid', count(*) = 0, coalesce(string_agg(c.relname, ', '), 'none invalid'), 'no invalid index'
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid IN ('client_app_overrides'::regclass, 'orchestration_workflows'::regclass,
                      'workflow_executions'::regclass, 'handover_packages'::regclass,
                      'integration_events'::regclass)
   AND NOT (i.indisvalid AND i.indisready);

SELECT 'schema.indexes_present', count(*) = 2, count(*)::text, '2'
  FROM pg_class WHERE relkind = 'i' AND relnamespace = current_schema()::regnamespace
   AND relname IN ('idx_cao_marketplace_module', 'idx_cao_installation');

SELECT 'constraints.foreign_keys_validated',
       count(*) FILTER (WHERE convalidated AND (
           (conname = 'fk_cao_marketplace_module' AND confdeltype = 'n') OR
           (conname = 'fk_cao_installation' AND confdeltype = 'c'))) = 2,
       string_agg(conname || ':' || CASE WHEN convalidated THEN 'valid' ELSE 'not valid' END
                  || ':' || confdeltype::text, ', '),
       'fk_cao_marketplace_module:valid:n, fk_cao_installation:valid:c'
  FROM pg_constraint
 WHERE conrelid = 'client_app_overrides'::regclass
   AND conname IN ('fk_cao_marketplace_module', 'fk_cao_installation');

SELECT 'transition.queue_drained', count(*) FILTER (WHERE q.enqueued_at < :'queue_drained_since'::timestamptz) = 0,
       count(*) FILTER (WHERE q.enqueued_at < :'queue_drained_since'::timestamptz)
           || ' queued before the drain (depth ' || count(*) || ')',
       '0 queued before the drain'
  FROM migration_ledger.transition_queue q;

SELECT 'linkage.module_name_matches', count(*) = 0, count(*)::text, '0'
  FROM client_app_overrides cao JOIN marketplace_modules mm ON mm.id = cao.marketplace_module_id
 WHERE mm.name <> cao.app_name
   AND NOT EXISTS (SELECT 1 FROM migration_ledger.transition_queue q WHERE q.names && ARRAY[cao.app_name, mm.name]);

SELECT 'linkage.installation_matches', count(*) = 0, count(*)::text, '0'
  FROM client_app_overrides cao JOIN module_installations mi ON mi.id = cao.installation_id
 WHERE mi.tenant_id <> cao.client_id OR mi.module_id <> cao.marketplace_module_id;

-- Every override whose app is in the marketplace is linked: those phase 3 planned, and those
-- the application wrote since (the transition's sync linked them).
SELECT 'linkage.complete', count(*) = 0, count(*)::text, '0'
  FROM client_app_overrides cao
 WHERE cao.marketplace_module_id IS NULL
   AND EXISTS (SELECT 1 FROM marketplace_modules mm WHERE mm.name = cao.app_name)
   AND NOT EXISTS (SELECT 1 FROM migration_ledger.transition_queue q WHERE cao.app_name = ANY (q.names));

-- While the transition is open (phase 3 to playbooks/complete.yml), its sync is in place: the
-- three triggers, enabled, and their functions SECURITY DEFINER with a fixed search_path; the
-- queue's drain, state and the log's fold have a fixed search_path, and only their owner (the
-- migration's login) may call them.
SELECT 'transition.sync_in_place',
       NOT t.open OR (x.triggers = 3 AND x.functions = 6),
       CASE WHEN t.open THEN 'open: ' || x.triggers || ' triggers, ' || x.functions || ' functions'
            ELSE 'closed (cutover done)' END,
       'open: 3 triggers, 6 functions (or closed)'
  FROM (SELECT EXISTS (SELECT 1 FROM migration_ledger.transition
                        WHERE completed_at IS NULL AND rolled_back_at IS NULL) AS open) AS t,
       (SELECT (SELECT count(*) FROM pg_trigger tg
                 WHERE NOT tg.tgisinternal AND tg.tgenabled IN ('O', 'A')
                   AND (tg.tgrelid, tg.tgname) IN (('client_app_overrides'::regclass, 'pgmigrate_transition_override'),
                                                   ('module_installations'::regclass, 'pgmigrate_transition_installation'),
                                                   ('marketplace_modules'::regclass, 'pgmigrate_transition_listing'))) AS triggers,
               (SELECT count(*) FROM pg_proc pr
                 WHERE pr.pronamespace = 'migration_ledger'::regnamespace
                   AND ((pr.prosecdef AND pr.proconfig IS NOT NULL
                         AND pr.proname IN ('transition_sync_override', 'transition_sync_installation',
                                            'transition_sync_listing'))
                        OR (pr.proname IN ('transition_drain', 'transition_queue_state', 'transition_fold_sync_log')
                            AND NOT pr.prosecdef
                            AND array_to_string(pr.proconfig, ',') LIKE '%search_path=%'
                            AND NOT EXISTS (SELECT 1 FROM aclexplode(coalesce(pr.proacl, acldefault('f', pr.proowner))) AS a
                                             WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))))
               AS functions) AS x;

-- While it is open, the linkage rule the sync derives by (phase 3's 005): its two sets, views
-- nobody but their owner reads, and its three functions, each with a fixed search_path and
-- callable by their owner only (nothing of it with a search_path its caller chose).
SELECT 'transition.linkage_rule',
       NOT t.open OR (x.views = 2 AND x.functions = 3),
       CASE WHEN t.open THEN 'open: ' || x.views || ' views, ' || x.functions || ' functions'
            ELSE 'closed (cutover done)' END,
       'open: 2 views, 3 functions with a fixed search_path, private (or closed)'
  FROM (SELECT EXISTS (SELECT 1 FROM migration_ledger.transition
                        WHERE completed_at IS NULL AND rolled_back_at IS NULL) AS open) AS t,
       (SELECT (SELECT count(*) FROM pg_class c
                 WHERE c.relnamespace = 'migration_ledger'::regnamespace AND c.relkind = 'v'
                   AND c.relname IN ('phase3_listings', 'phase3_installed_listings')
                   AND NOT EXISTS (SELECT 1 FROM aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) AS a
                                    WHERE a.grantee <> c.relowner)) AS views,
               (SELECT count(*) FROM pg_proc pr
                 WHERE pr.pronamespace = 'migration_ledger'::regnamespace
                   AND pr.proname IN ('phase3_linkage', 'phase3_linkage_choice', 'phase3_installed_event')
                   AND NOT pr.prosecdef
                   AND array_to_string(pr.proconfig, ',') LIKE '%search_path=%'
                   AND NOT EXISTS (SELECT 1 FROM aclexplode(coalesce(pr.proacl, acldefault('f', pr.proowner))) AS a
                                    WHERE a.grantee <> pr.proowner)) AS functions) AS x;

SELECT 'linkage.activation_status', count(*) = 0, count(*)::text, '0'
  FROM client_app_overrides cao
 WHERE cao.marketplace_module_id IS NOT NULL
   AND cao.activation_status <> CASE WHEN cao.enabled THEN 'active' ELSE 'inactive' END;

SELECT 'linkage.unmatched_stay_pending', count(*) = 0, count(*)::text, '0'
  FROM client_app_overrides cao
 WHERE NOT EXISTS (SELECT 1 FROM marketplace_modules mm WHERE mm.name = cao.app_name)
   AND (cao.marketplace_module_id IS NOT NULL OR cao.activation_status <> 'pending')
   AND NOT EXISTS (SELECT 1 FROM migration_ledger.transition_queue q WHERE cao.app_name = ANY (q.names));

SELECT 'workflows.one_per_client', count(*) = 0, count(*)::text, '0 clients with none or several'
  FROM clients_enhanced c
 WHERE (SELECT count(*) FROM orchestration_workflows w
         WHERE w.client_id = c.id AND w.workflow_type = 'client_onboarding') <> 1;

SELECT 'handover.one_per_deployed_client', count(*) = 0, count(*)::text, '0 deployed clients with none or several'
  FROM clients_enhanced c
 WHERE EXISTS (SELECT 1 FROM client_deployments d WHERE d.client_id = c.id AND d.status = 'deployed')
   AND (SELECT count(*) FROM handover_packages hp WHERE hp.client_id = c.id) <> 1;

SELECT 'handover.none_for_undeployed', count(*) = 0, count(*)::text, '0'
  FROM handover_packages hp
  JOIN migration_ledger.phase3_inserted i ON i.table_name = 'handover_packages' AND i.row_id = hp.id
 WHERE NOT EXISTS (SELECT 1 FROM client_deployments d WHERE d.client_id = hp.client_id AND d.status = 'deployed');

SELECT 'events.one_per_recent_installation', count(*) = 0, count(*)::text, '0 recent installations with none or several'
  FROM module_installations mi
 WHERE mi.installed_at >= :'events_since'::timestamptz
   AND (SELECT count(*) FROM integration_events e
         WHERE e.correlation_id = mi.id AND e.event_type = 'module_installed')
       NOT IN (1, CASE WHEN EXISTS (SELECT 1 FROM migration_ledger.transition_queue q
                                     WHERE q.installation_id = mi.id) THEN 0 ELSE 1 END);

SELECT 'security.rls_enabled', count(*) = 2, string_agg(relname, ', '), 'orchestration_workflows, handover_packages'
  FROM pg_class
 WHERE oid IN ('orchestration_workflows'::regclass, 'handover_packages'::regclass) AND relrowsecurity;

SELECT 'security.policies', count(*) = 2, string_agg(policyname, ', '), 'both isolation policies'
  FROM pg_policies
 WHERE schemaname = current_schema()
   AND policyname IN ('orchestration_client_isolation', 'handover_client_isolation');

SELECT 'security.views', count(*) = 3, string_agg(c.relname, ', '), 'three security_barrier views'
  FROM pg_class c
 WHERE c.relkind = 'v' AND c.relnamespace = current_schema()::regnamespace
   AND c.relname IN ('unified_client_dashboard', 'module_integration_view', 'workflow_progress_view')
   AND 'security_barrier=true' = ANY (coalesce(c.reloptions, '{}'));

SELECT 'security.grants', count(*) = 6, count(*)::text, '6 privileges'
  FROM information_schema.role_table_grants
 WHERE grantee = 'authenticated' AND table_schema = current_schema()
   AND ((table_name = 'orchestration_workflows' AND privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE'))
     OR (table_name IN ('unified_client_dashboard', 'handover_packages') AND privilege_type = 'SELECT'));

SELECT 'integrity.backup_tables', count(*) = 2, string_agg(relname, ', '), 'both backup tables'
  FROM pg_class
 WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace
   AND relname IN ('migration_backup_client_app_overrides', 'migration_backup_clients_enhanced');
