-- The migration ledger: every phase run, forward or back, with who, when, what SQL (checksums)
-- and what it did. Its own schema, never granted to application roles.
CREATE SCHEMA IF NOT EXISTS migration_ledger;
REVOKE ALL ON SCHEMA migration_ledger FROM PUBLIC;

CREATE TABLE IF NOT EXISTS migration_ledger.history (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id         uuid NOT NULL,
    phase          text NOT NULL,
    direction      text NOT NULL CHECK (direction IN ('apply', 'rollback')),
    status         text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at    timestamptz,
    operator       text NOT NULL,
    approved_by    text,
    environment    text NOT NULL,
    checksum       text,
    files          jsonb NOT NULL DEFAULT '{}',
    rows_affected  bigint,
    error          text,
    details        jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX IF NOT EXISTS history_phase_idx ON migration_ledger.history (phase, finished_at DESC);

-- What the migration itself created outside its own tables (a role, a schema, a function that
-- were absent), so a rollback removes only what the migration added.
CREATE TABLE IF NOT EXISTS migration_ledger.created_objects (
    kind        text NOT NULL,
    name        text NOT NULL,
    phase       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (kind, name)
);

-- Rows phase 3 inserted into the new tables, by id: the rollback deletes exactly these.
CREATE TABLE IF NOT EXISTS migration_ledger.phase3_inserted (
    table_name  text NOT NULL,
    row_id      uuid NOT NULL,
    PRIMARY KEY (table_name, row_id)
);

-- What default privileges gave PUBLIC, anon and authenticated on the relations and functions
-- named, taken back (REVOKE ALL; the API roles only where they exist). The one home of that
-- loop: phase 2 (027_private.sql, its new tables) and phase 5 (040_grants.sql, its views and
-- functions) each pass what they created. service_role keeps what the defaults gave it
-- (027_private.sql says why). The names arrive resolved (regclass, regprocedure), so nothing
-- here depends on a search_path (its own is empty); only the ledger's owner may call it.
CREATE OR REPLACE FUNCTION migration_ledger.revoke_default_grants(p_relations regclass[],
                                                                  p_functions regprocedure[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    grantees text;
    rel regclass;
    fn regprocedure;
BEGIN
    SELECT string_agg(', ' || quote_ident(r), '') INTO grantees
      FROM unnest(ARRAY['anon', 'authenticated']) AS r
     WHERE to_regrole(r) IS NOT NULL;
    FOREACH rel IN ARRAY coalesce(p_relations, '{}') LOOP
        EXECUTE format('REVOKE ALL ON TABLE %s FROM PUBLIC%s', rel, coalesce(grantees, ''));
    END LOOP;
    FOREACH fn IN ARRAY coalesce(p_functions, '{}') LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC%s', fn, coalesce(grantees, ''));
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION migration_ledger.revoke_default_grants(regclass[], regprocedure[]) FROM PUBLIC;
