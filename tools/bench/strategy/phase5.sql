-- (a) Phase 5 of the strategy (section 3.5). Its views and policies are elided ("AS ...;"):
-- filled with ours (migrations/ht036/phase5/deploy/020..040), which need the tenant rule. The tenant
-- rule is ours too (010_tenant_auth.sql) without its ledger bookkeeping.
-- psql variable: claim_path (e.g. {app_metadata,client_id}).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'auth') THEN
        CREATE SCHEMA auth;
        GRANT USAGE ON SCHEMA auth TO authenticated;
    END IF;
    IF to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb
            LANGUAGE sql STABLE
            AS $fn$
                SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                                nullif(current_setting('request.jwt.claims', true), ''))::jsonb
            $fn$;
    END IF;
END
$$;

-- psql does not expand variables inside dollar quotes: build the statement with format().
SELECT format($stmt$
CREATE OR REPLACE FUNCTION public.tenant_client_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $fn$ SELECT nullif(auth.jwt() #>> %L, '')::uuid $fn$
$stmt$, :'claim_path')
\gexec

CREATE OR REPLACE FUNCTION public.tenant_sees_all() RETURNS boolean
    LANGUAGE sql STABLE
    AS $fn$ SELECT coalesce((SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles
                              WHERE rolname = current_user), false) $fn$;

-- Our 030 and 040 record what they change in the ledger (so that a rollback undoes exactly
-- that): (a) gets the ledger's tables for them, and nothing else of ours.
\ir ../../../files/sql/ledger/ledger.sql
\ir ../../../migrations/ht036/phase5/deploy/020_views.sql
\ir ../../../migrations/ht036/phase5/deploy/030_rls.sql
\ir ../../../migrations/ht036/phase5/deploy/040_grants.sql
