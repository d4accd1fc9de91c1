-- The access check: nothing the migration created is open to those who should not have it.
-- Run read-only by phase 5 after its grants (roles/phase5_access) and by phase 6's validator;
-- either fails the run on a failed row. One statement, rows of (check, passed, observed,
-- expected), read from the catalog alone.
--
-- What it holds to account: every object the ledger says the migration created (phase 2's
-- tables and the sequences they own, phase 5's views and functions, auth.jwt() where phase 5
-- created it); a ledger from before those records, the objects those phases create.
--   access.privileges    PUBLIC, anon and authenticated hold nothing on them but what phase 5
--                        grants (040_grants.sql), directly, through a role they belong to or
--                        through a column; service_role (Supabase's trusted server key) may hold
--                        what default privileges gave it, but may not grant it on
--   access.row_security  every such table in a schema PUBLIC, anon or authenticated may use
--                        has row-level security on
--   access.search_path   every such function runs with a fixed search_path
--   access.ledger_schema the ledger's schema is used by none of PUBLIC, anon and authenticated
-- A role that does not exist here (anon, say, on a plain PostgreSQL) holds nothing.
WITH ledger AS (
    SELECT kind, name, phase FROM migration_ledger.created_objects
),
recorded AS (
    SELECT EXISTS (SELECT 1 FROM ledger WHERE kind = 'record' AND phase = '2') AS phase2,
           EXISTS (SELECT 1 FROM ledger WHERE kind = 'record' AND phase = '5') AS phase5
),
-- Each name resolved only as its kind (a grant's name is not a function's: to_regprocedure
-- raises on it before PostgreSQL 16).
resolved AS (
    SELECT l.kind,
           CASE WHEN l.kind IN ('table', 'view') THEN to_regclass(l.name)::oid END AS rel,
           CASE WHEN l.kind = 'function' THEN to_regprocedure(l.name)::oid END AS func
      FROM ledger l
     WHERE l.kind IN ('table', 'view', 'function')
),
relations AS (
    SELECT rel AS oid, kind FROM resolved WHERE rel IS NOT NULL
    UNION
    SELECT to_regclass(t)::oid, 'table'
      FROM unnest(ARRAY['orchestration_workflows', 'workflow_executions', 'handover_packages',
                        'integration_events']) AS t
     WHERE NOT (SELECT phase2 FROM recorded) AND to_regclass(t) IS NOT NULL
    UNION
    SELECT to_regclass(v)::oid, 'view'
      FROM unnest(ARRAY['unified_client_dashboard', 'module_integration_view',
                        'workflow_progress_view']) AS v
     WHERE NOT (SELECT phase5 FROM recorded) AND to_regclass(v) IS NOT NULL
),
sequences AS (
    SELECT DISTINCT d.objid::regclass AS oid
      FROM pg_depend d
      JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
     WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid IN (SELECT oid FROM relations WHERE kind = 'table')
       AND d.deptype IN ('a', 'i')
),
functions AS (
    SELECT func AS oid FROM resolved WHERE func IS NOT NULL
    UNION
    SELECT to_regprocedure(f)::oid
      FROM unnest(ARRAY['tenant_client_id()', 'tenant_sees_all()']) AS f
     WHERE NOT (SELECT phase5 FROM recorded) AND to_regprocedure(f) IS NOT NULL
),
-- What phase 5 grants, and so may be held.
allowed (object, grantee, privilege) AS (
    VALUES (to_regclass('orchestration_workflows')::oid, 'authenticated', 'SELECT'),
           (to_regclass('orchestration_workflows')::oid, 'authenticated', 'INSERT'),
           (to_regclass('orchestration_workflows')::oid, 'authenticated', 'UPDATE'),
           (to_regclass('orchestration_workflows')::oid, 'authenticated', 'DELETE'),
           (to_regclass('handover_packages')::oid, 'authenticated', 'SELECT'),
           (to_regclass('unified_client_dashboard')::oid, 'authenticated', 'SELECT'),
           (to_regprocedure('tenant_client_id()')::oid, 'authenticated', 'EXECUTE'),
           (to_regprocedure('tenant_sees_all()')::oid, 'authenticated', 'EXECUTE'),
           (to_regprocedure('auth.jwt()')::oid, 'authenticated', 'EXECUTE')
),
roles AS (
    SELECT r AS grantee FROM unnest(ARRAY['anon', 'authenticated']) AS r WHERE to_regrole(r) IS NOT NULL
),
held AS (
    -- Relations: table-wide or on any column, through any role membership.
    SELECT r.oid::oid AS object, r.oid::regclass::text AS what, g.grantee, p.privilege
      FROM relations r
     CROSS JOIN roles g
     CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                             'TRIGGER']) AS p (privilege)
     WHERE CASE WHEN p.privilege IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                THEN has_any_column_privilege(g.grantee, r.oid, p.privilege)
                ELSE has_table_privilege(g.grantee, r.oid, p.privilege) END
    UNION ALL
    SELECT s.oid::oid, s.oid::text, g.grantee, p.privilege
      FROM sequences s
     CROSS JOIN roles g
     CROSS JOIN unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS p (privilege)
     WHERE has_sequence_privilege(g.grantee, s.oid, p.privilege)
    UNION ALL
    SELECT f.oid::oid, f.oid::regprocedure::text, g.grantee, 'EXECUTE'
      FROM functions f
     CROSS JOIN roles g
     WHERE has_function_privilege(g.grantee, f.oid, 'EXECUTE')
    UNION ALL
    -- PUBLIC, as granted (a NULL ACL is the owner's defaults: PUBLIC EXECUTE on a function).
    SELECT c.oid, c.oid::regclass::text, 'PUBLIC', a.privilege_type
      FROM pg_class c
     CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) AS a
     WHERE (c.oid IN (SELECT oid FROM relations) OR c.oid IN (SELECT oid FROM sequences))
       AND a.grantee = 0
    UNION ALL
    SELECT p.oid, p.oid::regprocedure::text, 'PUBLIC', a.privilege_type
      FROM pg_proc p
     CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f'::"char", p.proowner))) AS a
     WHERE p.oid IN (SELECT oid FROM functions) AND a.grantee = 0
),
regrantable AS (
    -- service_role may hold what default privileges gave it, never the right to pass it on.
    SELECT c.oid::regclass::text AS what, a.privilege_type AS privilege
      FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) AS a
     WHERE (c.oid IN (SELECT oid FROM relations) OR c.oid IN (SELECT oid FROM sequences))
       AND a.grantee = to_regrole('service_role') AND a.is_grantable
    UNION ALL
    SELECT p.oid::regprocedure::text, a.privilege_type
      FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) AS a
     WHERE p.oid IN (SELECT oid FROM functions)
       AND a.grantee = to_regrole('service_role') AND a.is_grantable
),
excess AS (
    SELECT h.what || ': ' || h.grantee || ' ' || h.privilege AS finding
      FROM held h
     WHERE NOT EXISTS (SELECT 1 FROM allowed a
                        WHERE a.object = h.object AND a.grantee = h.grantee
                          AND a.privilege = h.privilege)
    UNION ALL
    SELECT what || ': service_role ' || privilege || ' WITH GRANT OPTION' FROM regrantable
),
exposed_without_rls AS (
    SELECT c.oid::regclass::text AS what
      FROM relations r
      JOIN pg_class c ON c.oid = r.oid
     WHERE r.kind = 'table' AND NOT c.relrowsecurity
       AND (has_schema_privilege('public', c.relnamespace, 'USAGE')
            OR EXISTS (SELECT 1 FROM roles g WHERE has_schema_privilege(g.grantee, c.relnamespace, 'USAGE')))
),
mutable_path AS (
    SELECT p.oid::regprocedure::text AS what
      FROM pg_proc p
     WHERE p.oid IN (SELECT oid FROM functions)
       AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) AS c WHERE starts_with(c, 'search_path='))
),
ledger_users AS (
    SELECT g AS who
      FROM unnest(ARRAY['public', 'anon', 'authenticated']) AS g
     WHERE CASE WHEN g = 'public' OR to_regrole(g) IS NOT NULL
                THEN has_schema_privilege(g, 'migration_ledger', 'USAGE') END
)
SELECT 'access.privileges' AS check, count(*) = 0 AS passed,
       coalesce(string_agg(finding, '; ' ORDER BY finding), 'none beyond phase 5''s grants') AS observed,
       'PUBLIC, anon and authenticated hold only what phase 5 grants' AS expected
  FROM excess
UNION ALL
SELECT 'access.row_security', count(*) = 0,
       coalesce(string_agg(what, ', ' ORDER BY what), 'on for every new table'),
       'row-level security on every new table of an exposed schema'
  FROM exposed_without_rls
UNION ALL
SELECT 'access.search_path', count(*) = 0,
       coalesce(string_agg(what, ', ' ORDER BY what), 'fixed for every new function'),
       'a fixed search_path on every function the migration created'
  FROM mutable_path
UNION ALL
SELECT 'access.ledger_schema', count(*) = 0,
       coalesce('usable by ' || string_agg(who, ', ' ORDER BY who), 'private'),
       'migration_ledger usable by none of PUBLIC, anon and authenticated'
  FROM ledger_users;
