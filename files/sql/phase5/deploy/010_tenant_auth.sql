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
        INSERT INTO migration_ledger.created_objects (kind, name, phase)
        VALUES ('function', 'auth.jwt()', '5') ON CONFLICT DO NOTHING;
    END IF;
END
$$;

-- The tenant rule, once: the client id of the session's JWT, at the claim path
-- :'claim_path' (migration_tenant_claim_path). NULL when absent, so nothing matches.
CREATE OR REPLACE FUNCTION tenant_client_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $fn$ SELECT nullif(auth.jwt() #>> :'claim_path', '')::uuid $fn$;

-- Whether the session sees every tenant's rows, with row-level security's own rule: superusers
-- and BYPASSRLS roles do; everyone else sees only their own client's rows.
CREATE OR REPLACE FUNCTION tenant_sees_all() RETURNS boolean
    LANGUAGE sql STABLE
    AS $fn$ SELECT coalesce((SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles
                              WHERE rolname = current_user), false) $fn$;
