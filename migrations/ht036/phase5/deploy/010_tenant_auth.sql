-- Phase 5, step 1: what the tenant rule needs, created only where absent. On Supabase the role
-- `authenticated` and auth.jwt() exist and are left alone; on a plain PostgreSQL we create them
-- with Supabase's semantics (auth.jwt() returns the request's JWT claims from the
-- request.jwt.claims setting) and record each creation in the ledger, so a rollback removes only
-- what the migration added.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        -- Roles are cluster-wide: databases of one cluster migrating at the same time (a fleet)
        -- race to create it; the loser finds it created and leaves it to the winner's ledger.
        BEGIN
            CREATE ROLE authenticated NOLOGIN;
            INSERT INTO migration_ledger.created_objects (kind, name, phase)
            VALUES ('role', 'authenticated', '5') ON CONFLICT DO NOTHING;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'auth') THEN
        CREATE SCHEMA auth;
        GRANT USAGE ON SCHEMA auth TO authenticated;
        INSERT INTO migration_ledger.created_objects (kind, name, phase)
        VALUES ('schema', 'auth', '5') ON CONFLICT DO NOTHING;
    END IF;
    IF to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb
            LANGUAGE sql STABLE
            AS $fn$
                SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                                nullif(current_setting('request.jwt.claims', true), ''))::jsonb
            $fn$;
        -- Only the role the tenant rule serves calls it (the policies and views run it as the
        -- caller), not PUBLIC; a fixed search_path like every function the migration creates.
        ALTER FUNCTION auth.jwt() SET search_path = '';
        REVOKE ALL ON FUNCTION auth.jwt() FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION auth.jwt() TO authenticated;
        INSERT INTO migration_ledger.created_objects (kind, name, phase)
        VALUES ('function', 'auth.jwt()', '5') ON CONFLICT DO NOTHING;
    END IF;
END
$$;

-- Which of phase 5's objects are absent, recorded before creating them (as phase 2's 005 does):
-- the access check (verify/access.sql) holds every object the ledger says the migration created
-- to the strategy's grants. The 'record' row says this bookkeeping ran: the rollback then undoes
-- exactly the grants and row-level security phase 5 recorded (040, 030); a ledger without it
-- predates it, and its rollback falls back to the earlier rule.
INSERT INTO migration_ledger.created_objects (kind, name, phase)
SELECT 'view', v, '5'
  FROM unnest(ARRAY['unified_client_dashboard', 'module_integration_view', 'workflow_progress_view']) AS v
 WHERE to_regclass(v) IS NULL
UNION ALL
SELECT 'function', f, '5'
  FROM unnest(ARRAY['tenant_client_id()', 'tenant_sees_all()']) AS f
 WHERE to_regprocedure(f) IS NULL
UNION ALL
SELECT 'record', 'phase 5', '5'
ON CONFLICT DO NOTHING;

-- The tenant rule, once: the client id of the session's JWT, at the claim path
-- :'claim_path' (migration_tenant_claim_path). NULL when absent, so nothing matches.
-- Both functions carry a fixed, empty search_path (everything in them is schema-qualified or
-- pg_catalog's): a caller's search_path cannot redirect them. The SET clause keeps the planner
-- from inlining them, which costs nothing here: every policy and view calls them once per
-- statement, as an InitPlan ((SELECT ...)).
CREATE OR REPLACE FUNCTION tenant_client_id() RETURNS uuid
    LANGUAGE sql STABLE
    SET search_path = ''
    AS $fn$ SELECT nullif(auth.jwt() #>> :'claim_path', '')::uuid $fn$;

-- Whether the session sees every tenant's rows, with row-level security's own rule: superusers
-- and BYPASSRLS roles do; everyone else sees only their own client's rows.
CREATE OR REPLACE FUNCTION tenant_sees_all() RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = ''
    AS $fn$ SELECT coalesce((SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles
                              WHERE rolname = current_user), false) $fn$;
