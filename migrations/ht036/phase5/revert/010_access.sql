-- Rollback of phase 5 (strategy 3.5; 5.1 step 2 drops the views): the grants, the policies and
-- row-level security (as its deploy recorded them), the three views, the tenant rule, and the
-- role, schema and function phase 5 created where absent - only those it recorded in
-- migration_ledger.created_objects, and only when nothing else uses them. On Supabase (role, auth schema and auth.jwt() already there) they
-- stay. One transaction, brief locks under the runner's lock_timeout. RESTRICT throughout: an
-- application view on our views is named by the rollback's plan, never dropped with them.

-- 1. Grants: revoke what phase 5 granted. Its deploy recorded each privilege authenticated did
-- not hold before ('grant'); a ledger from before that record ('record' row of phase 5 absent)
-- falls back to the earlier rule: every grant of 040 except what the table owner's default
-- privileges grant every new table anyway (Supabase grants tables in public to authenticated).
DO $$
DECLARE
    g record;
BEGIN
    IF to_regrole('authenticated') IS NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM migration_ledger.created_objects WHERE kind = 'record' AND name = 'phase 5') THEN
        FOR g IN
            SELECT split_part(o.name, ' ', 1) AS tbl, split_part(o.name, ' ', 2) AS priv
              FROM migration_ledger.created_objects o
             WHERE o.kind = 'grant' AND o.phase = '5'
               AND CASE WHEN o.kind = 'grant' THEN to_regclass(split_part(o.name, ' ', 1)) END IS NOT NULL
             ORDER BY o.name
        LOOP
            EXECUTE format('REVOKE %s ON TABLE %I FROM authenticated', g.priv, g.tbl);
        END LOOP;
        RETURN;
    END IF;
    FOR g IN
        SELECT v.tbl, v.priv
          FROM (VALUES ('orchestration_workflows', 'SELECT'), ('orchestration_workflows', 'INSERT'),
                       ('orchestration_workflows', 'UPDATE'), ('orchestration_workflows', 'DELETE'),
                       ('handover_packages', 'SELECT')) AS v (tbl, priv)
         WHERE to_regclass(v.tbl) IS NOT NULL
           AND NOT EXISTS (
               SELECT 1
                 FROM pg_class c
                 JOIN pg_default_acl d
                   ON d.defaclrole = c.relowner AND d.defaclobjtype = 'r'
                  AND d.defaclnamespace IN (0, c.relnamespace)
                 CROSS JOIN LATERAL aclexplode(d.defaclacl) AS a
                WHERE c.oid = to_regclass(v.tbl)
                  AND a.grantee = to_regrole('authenticated')::oid
                  AND a.privilege_type = v.priv)
    LOOP
        EXECUTE format('REVOKE %s ON TABLE %I FROM authenticated', g.priv, g.tbl);
    END LOOP;
END
$$;

-- 2. Policies on the new tables, and row-level security where phase 5 turned it on ('rls'
-- records; a ledger from before them: on the two tenant tables, the earlier rule).
DO $$
DECLARE
    recorded constant boolean := EXISTS (
        SELECT 1 FROM migration_ledger.created_objects WHERE kind = 'record' AND name = 'phase 5');
    item text;
BEGIN
    IF to_regclass('orchestration_workflows') IS NOT NULL THEN
        DROP POLICY IF EXISTS orchestration_client_isolation ON orchestration_workflows;
    END IF;
    IF to_regclass('handover_packages') IS NOT NULL THEN
        DROP POLICY IF EXISTS handover_client_isolation ON handover_packages;
    END IF;
    IF to_regclass('workflow_executions') IS NOT NULL THEN
        DROP POLICY IF EXISTS workflow_executions_client_isolation ON workflow_executions;
    END IF;
    IF to_regclass('integration_events') IS NOT NULL THEN
        DROP POLICY IF EXISTS integration_events_client_isolation ON integration_events;
    END IF;
    FOREACH item IN ARRAY ARRAY['orchestration_workflows', 'workflow_executions', 'handover_packages',
                                'integration_events'] LOOP
        IF to_regclass(item) IS NOT NULL AND (
               (recorded AND EXISTS (SELECT 1 FROM migration_ledger.created_objects
                                      WHERE kind = 'rls' AND name = item))
               OR (NOT recorded AND item IN ('orchestration_workflows', 'handover_packages'))) THEN
            EXECUTE format('ALTER TABLE %I DISABLE ROW LEVEL SECURITY', item);
        END IF;
    END LOOP;
    DELETE FROM migration_ledger.created_objects
     WHERE phase = '5' AND (kind IN ('grant', 'rls', 'view', 'record')
                            OR (kind = 'function' AND name <> 'auth.jwt()'));
END
$$;

-- 3. The views (their grants go with them), then the tenant rule they used.
DROP VIEW IF EXISTS unified_client_dashboard, module_integration_view, workflow_progress_view;
DROP FUNCTION IF EXISTS tenant_client_id(), tenant_sees_all();

-- 4. What phase 5 created because it was absent: auth.jwt(), the auth schema, the authenticated
-- role - each only if recorded, and only if nothing else uses it now; a kept one stays recorded
-- (a later rollback tries again) and is named in the rollback's output with the reason.
DO $$
DECLARE
    role_oid oid;
    users text;
BEGIN
    IF EXISTS (SELECT 1 FROM migration_ledger.created_objects
                WHERE kind = 'function' AND name = 'auth.jwt()') THEN
        SELECT string_agg(DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid), ', ')
          INTO users
          FROM pg_depend d
         WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = to_regprocedure('auth.jwt()')
           AND d.deptype = 'n';
        IF to_regprocedure('auth.jwt()') IS NOT NULL AND users IS NULL THEN
            DROP FUNCTION auth.jwt();
        END IF;
        IF users IS NULL THEN
            DELETE FROM migration_ledger.created_objects WHERE kind = 'function' AND name = 'auth.jwt()';
            RAISE NOTICE 'pgmigrate: dropped=function auth.jwt()';
        ELSE
            RAISE NOTICE 'pgmigrate: kept=function auth.jwt(), created by the migration, is used by %', users;
        END IF;
    END IF;

    IF EXISTS (SELECT 1 FROM migration_ledger.created_objects WHERE kind = 'schema' AND name = 'auth') THEN
        SELECT string_agg(pg_describe_object(d.classid, d.objid, d.objsubid), ', ')
          INTO users
          FROM pg_depend d
         WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = to_regnamespace('auth');
        IF to_regnamespace('auth') IS NOT NULL AND users IS NULL THEN
            DROP SCHEMA auth;
        END IF;
        IF users IS NULL THEN
            DELETE FROM migration_ledger.created_objects WHERE kind = 'schema' AND name = 'auth';
            RAISE NOTICE 'pgmigrate: dropped=schema auth';
        ELSE
            RAISE NOTICE 'pgmigrate: kept=schema auth, created by the migration, still holds %', users;
        END IF;
    END IF;

    -- Roles are cluster-wide: pg_shdepend lists grants, policies, ownership and default
    -- privileges in every database of the cluster; memberships and settings count too.
    IF EXISTS (SELECT 1 FROM migration_ledger.created_objects
                WHERE kind = 'role' AND name = 'authenticated') THEN
        role_oid := to_regrole('authenticated');
        SELECT string_agg(what, '; ') INTO users
          FROM (SELECT CASE WHEN s.dbid = 0 THEN 'shared objects'
                            ELSE 'database ' || coalesce(db.datname, s.dbid::text) END
                       || ' (' || count(*) || ' grant(s), policies or objects)' AS what
                  FROM pg_shdepend s
                  LEFT JOIN pg_database db ON db.oid = s.dbid
                 WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = role_oid
                 GROUP BY s.dbid, db.datname
                UNION ALL
                SELECT 'role memberships (' || count(*) || ')'
                  FROM pg_auth_members m WHERE m.roleid = role_oid OR m.member = role_oid
                HAVING count(*) > 0
                UNION ALL
                SELECT 'role settings (' || count(*) || ')'
                  FROM pg_db_role_setting r WHERE r.setrole = role_oid
                HAVING count(*) > 0) AS uses;
        IF role_oid IS NOT NULL AND users IS NULL THEN
            DROP ROLE authenticated;
        END IF;
        IF users IS NULL THEN
            DELETE FROM migration_ledger.created_objects WHERE kind = 'role' AND name = 'authenticated';
            RAISE NOTICE 'pgmigrate: dropped=role authenticated';
        ELSE
            RAISE NOTICE 'pgmigrate: kept=role authenticated, created by the migration, is still used by %; '
                         'drop it by hand (DROP ROLE authenticated) once nothing uses it', users;
        END IF;
    END IF;
END
$$;
