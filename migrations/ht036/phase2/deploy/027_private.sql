-- Phase 2, step 2c: the new tables are private. On Supabase the default privileges of the schema
-- grant every new table to anon (the project's public key), authenticated and service_role; a
-- plain PostgreSQL grants PUBLIC nothing on tables, but an operator's own ALTER DEFAULT
-- PRIVILEGES may. The strategy grants anon nothing and authenticated only what phase 5 grants
-- (040_grants.sql), so what the defaults gave PUBLIC, anon and authenticated is taken back here,
-- before any row exists. service_role keeps what they gave it: Supabase documents it as the
-- trusted server key that bypasses row-level security on every table of the schema.
-- Only the tables phase 2 created (005 recorded them): an adopted table keeps the grants it had.
-- Their rollback drops them, grants and all, so nothing of this needs undoing.
-- The loop itself is the ledger's (migration_ledger.revoke_default_grants), shared with phase 5.
SELECT migration_ledger.revoke_default_grants(ARRAY(
    SELECT to_regclass(o.name)
      FROM migration_ledger.created_objects o
     WHERE o.kind = 'table' AND o.phase = '2'
       -- a guard, not a filter: the planner may test a row of any kind first ('phase 2' is
       -- no relation name, and to_regclass raises on it)
       AND CASE WHEN o.kind = 'table' THEN to_regclass(o.name) END IS NOT NULL
     ORDER BY o.name));
