-- Read-only, before a rollback changes anything: objects outside the migration that depend on
-- what rolling back the phases :'phases' would drop - a view on our views or on our columns, a
-- foreign key into our tables, a function, default or policy using our functions. Every drop of
-- the rollback is RESTRICT (the strategy's CASCADE would silently take them along), so the
-- rollback names them here and refuses, and nothing changes.
-- What lives on client_app_overrides itself (an index or a constraint on a column phase 2 added)
-- is dropped with the column and does not count; neither do our own objects.
WITH rolled AS (
    SELECT unnest(:'phases'::text[]) AS phase
),
legacy AS (
    SELECT NOT EXISTS (SELECT 1 FROM migration_ledger.created_objects
                        WHERE kind = 'record' AND phase = '2') AS yes
),
dropped_rel AS (
    SELECT r.oid FROM (
        SELECT to_regclass(v)::oid AS oid
          FROM unnest(ARRAY['unified_client_dashboard', 'module_integration_view',
                            'workflow_progress_view']) AS v
         WHERE '5' IN (SELECT phase FROM rolled)
        UNION
        SELECT to_regclass(t)::oid
          FROM unnest(ARRAY['orchestration_workflows', 'workflow_executions', 'handover_packages',
                            'integration_events']) AS t
         WHERE '2' IN (SELECT phase FROM rolled)
           AND ((SELECT yes FROM legacy) OR EXISTS (
                SELECT 1 FROM migration_ledger.created_objects o
                 WHERE o.kind = 'table' AND o.name = t))) AS r
     WHERE r.oid IS NOT NULL
),
dropped_col AS (
    SELECT a.attrelid AS rel, a.attnum
      FROM pg_attribute a
     WHERE a.attrelid = to_regclass('client_app_overrides') AND NOT a.attisdropped
       AND a.attname IN ('marketplace_module_id', 'installation_id', 'activation_status',
                         'activation_metadata')
       AND '2' IN (SELECT phase FROM rolled)
       AND ((SELECT yes FROM legacy) OR EXISTS (
            SELECT 1 FROM migration_ledger.created_objects o
             WHERE o.kind = 'column' AND o.name = 'client_app_overrides.' || a.attname))
),
dropped_fn AS (
    SELECT f.oid FROM (
        SELECT to_regprocedure(p)::oid AS oid
          FROM unnest(ARRAY['tenant_client_id()', 'tenant_sees_all()']) AS p
         WHERE '5' IN (SELECT phase FROM rolled)) AS f
     WHERE f.oid IS NOT NULL
),
our_policies AS (
    SELECT p.oid FROM pg_policy p
     WHERE p.polname IN ('orchestration_client_isolation', 'handover_client_isolation',
                         'workflow_executions_client_isolation', 'integration_events_client_isolation')
       AND '5' IN (SELECT phase FROM rolled)
),
deps AS (
    SELECT d.classid, d.objid, d.refclassid, d.refobjid, d.refobjsubid
      FROM pg_depend d
     WHERE d.deptype = 'n'
       AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid IN (SELECT oid FROM dropped_rel))
         OR (d.refclassid = 'pg_class'::regclass
             AND (d.refobjid, d.refobjsubid) IN (SELECT rel, attnum FROM dropped_col))
         OR (d.refclassid = 'pg_type'::regclass
             AND d.refobjid IN (SELECT c.reltype FROM pg_class c
                                 WHERE c.oid IN (SELECT oid FROM dropped_rel)))
         OR (d.refclassid = 'pg_proc'::regclass AND d.refobjid IN (SELECT oid FROM dropped_fn)))
),
placed AS (
    -- The relation each dependent object belongs to (a view's rule, a table's constraint...).
    SELECT deps.*,
           CASE deps.classid
               WHEN 'pg_rewrite'::regclass THEN (SELECT r.ev_class FROM pg_rewrite r WHERE r.oid = deps.objid)
               WHEN 'pg_constraint'::regclass THEN (SELECT c.conrelid FROM pg_constraint c WHERE c.oid = deps.objid)
               WHEN 'pg_attrdef'::regclass THEN (SELECT a.adrelid FROM pg_attrdef a WHERE a.oid = deps.objid)
               WHEN 'pg_trigger'::regclass THEN (SELECT t.tgrelid FROM pg_trigger t WHERE t.oid = deps.objid)
               WHEN 'pg_policy'::regclass THEN (SELECT p.polrelid FROM pg_policy p WHERE p.oid = deps.objid)
               WHEN 'pg_class'::regclass THEN coalesce(
                   (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = deps.objid), deps.objid)
           END AS rel
      FROM deps
)
SELECT DISTINCT
       CASE WHEN classid = 'pg_rewrite'::regclass THEN pg_describe_object('pg_class'::regclass, rel, 0)
            ELSE pg_describe_object(classid, objid, 0) END AS dependent,
       pg_describe_object(refclassid, refobjid, refobjsubid) AS depends_on
  FROM placed
 WHERE NOT coalesce(rel IN (SELECT oid FROM dropped_rel), false)
   AND NOT (classid = 'pg_proc'::regclass AND objid IN (SELECT oid FROM dropped_fn))
   AND NOT (classid = 'pg_policy'::regclass AND objid IN (SELECT oid FROM our_policies))
   AND NOT (rel IS NOT DISTINCT FROM refobjid AND classid <> 'pg_rewrite'::regclass
            AND refobjid = to_regclass('client_app_overrides')::oid)
 ORDER BY 1, 2;
