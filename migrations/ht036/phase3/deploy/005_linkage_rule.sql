-- Phase 3, step 0: THE linkage rule, defined once. The plan (010) and the transition's sync
-- (007) both use it; a rule written twice drifts.
--
-- For an override of client p_client_id named p_app_name with enabled p_enabled:
--   * among the marketplace modules named p_app_name, one the client has installed wins (the
--     oldest such listing, and its newest installation); otherwise the oldest listing
--     (created_at, then id), with no installation;
--   * activation_status is 'active' / 'inactive' from enabled, 'pending' where no module of that
--     name exists (module and installation NULL then);
--   * candidates: how many listings share the name; chosen_by: which rule decided ('none',
--     'unique', 'installed', 'oldest_listing').
-- In three parts, so that one override (the sync) and every override (the plan) are computed
-- by the same text: the listings of every name (the view phase3_listings), the installed listing
-- of every client and name (the view phase3_installed_listings), and the choice from those two
-- (phase3_linkage_choice). phase3_linkage puts them together for one override; the plan joins
-- the two sets to the overrides (hash joins over the tables once, instead of two index probes
-- per override: the plan step 2.4 times faster at a million overrides, docs/transition.md).
--
-- Nothing here runs with a search_path its caller chose (Supabase's linter,
-- function_search_path_mutable; docs/design.md, departures):
--   * the two sets are VIEWS: the planner always inlines a view, and pushes the caller's name and
--     client into its GROUP BY and DISTINCT ON, so one override reads only its own rows (index
--     scans, as before). Their tables are bound when the view is created, in the migration's
--     session (search_path = migration_db_schema), not when it is read. A view has no
--     search_path to set, and the linter checks none. As functions (LANGUAGE sql, inlined only
--     without a SET clause) they had to leave the search_path to the caller.
--     While they exist (until the cutover or a rollback of phase 3), the columns they read
--     cannot be dropped or retyped: the application's DDL on them waits for the cutover.
--   * the choice, the one-override rule and the event are functions with SET search_path = ''
--     (they name nothing unqualified). A function with a SET clause is never inlined: the choice
--     costs a call per override in the plan (the plan step about twice as long, 1-5 s more per
--     million overrides; docs/transition.md), phase3_linkage one plpgsql call per write of the
--     sync (its statement planned once per session, generic under the sync's plan_cache_mode,
--     with the views inlined into it; about 15% more per new override), the event one call per
--     installation. The choice cannot be a view: it takes the override's values, and the
--     override the sync links (NEW, in a BEFORE trigger) is in no table a view could read; a
--     second copy of it inline in the plan is what this file exists to prevent.
-- Who may read or call them: only their owner (the ledger's schema is granted to no one).
CREATE OR REPLACE VIEW migration_ledger.phase3_listings AS
SELECT mm.name, count(*)::integer AS candidates, (array_agg(mm.id ORDER BY mm.created_at, mm.id))[1] AS oldest
  FROM marketplace_modules AS mm
 GROUP BY mm.name;

CREATE OR REPLACE VIEW migration_ledger.phase3_installed_listings AS
SELECT DISTINCT ON (mi.tenant_id, mm.name)
       mi.tenant_id AS client_id, mm.name, mm.id AS module_id, mi.id AS installation_id
  FROM module_installations AS mi
  JOIN marketplace_modules AS mm ON mm.id = mi.module_id
 ORDER BY mi.tenant_id, mm.name, mm.created_at, mm.id, mi.installed_at DESC, mi.id;

-- The choice, from the name's listings (NULLs: none) and the client's installed listing of it
-- (NULLs: none). plpgsql: compiled once per session, its expressions evaluated without planning.
-- (As LANGUAGE sql with a SET clause it was planned again in every statement that called it:
-- 60-90 microseconds more per write of the sync, docs/transition.md.) One row, not a set: a
-- database whose phase 3 was opened by the version that returned a set has that one dropped.
DO $$
BEGIN
    IF (SELECT p.proretset FROM pg_proc AS p
         WHERE p.oid = to_regprocedure('migration_ledger.phase3_linkage_choice(uuid, integer, uuid, uuid, boolean)')) THEN
        DROP FUNCTION migration_ledger.phase3_linkage_choice(uuid, integer, uuid, uuid, boolean);
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION migration_ledger.phase3_linkage_choice(
    p_oldest uuid, p_candidates integer, p_installed_module_id uuid, p_installation_id uuid,
    p_enabled boolean,
    OUT module_id uuid, OUT installation_id uuid, OUT activation_status varchar(50),
    OUT candidates integer, OUT chosen_by text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = ''
AS $$
BEGIN
    module_id := coalesce(p_installed_module_id, p_oldest);
    installation_id := p_installation_id;
    activation_status := CASE WHEN p_oldest IS NULL THEN 'pending'
                              WHEN p_enabled THEN 'active' ELSE 'inactive' END;
    candidates := coalesce(p_candidates, 0);
    chosen_by := CASE WHEN p_oldest IS NULL THEN 'none'
                      WHEN p_candidates = 1 THEN 'unique'
                      WHEN p_installation_id IS NOT NULL THEN 'installed'
                      ELSE 'oldest_listing' END;
END
$$;

-- One override. Exactly one row, always. plpgsql: its statement is prepared once per session
-- (a LANGUAGE sql function with a SET clause is planned again at every call).
CREATE OR REPLACE FUNCTION migration_ledger.phase3_linkage(p_client_id uuid, p_app_name text, p_enabled boolean)
RETURNS TABLE (module_id uuid, installation_id uuid, activation_status varchar(50),
               candidates integer, chosen_by text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = ''
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT c.module_id, c.installation_id, c.activation_status, c.candidates, c.chosen_by
      FROM (SELECT 1) AS one
      LEFT JOIN migration_ledger.phase3_listings AS n ON n.name = p_app_name
      LEFT JOIN migration_ledger.phase3_installed_listings AS i
             ON i.client_id = p_client_id AND i.name = p_app_name
     CROSS JOIN LATERAL migration_ledger.phase3_linkage_choice(n.oldest, n.candidates, i.module_id,
                                                              i.installation_id, p_enabled) AS c;
END
$$;

-- The module_installed event of an installation, defined once: phase 3's step 050 inserts one
-- per installation of the event window, the transition's sync one per installation recorded
-- after.
CREATE OR REPLACE FUNCTION migration_ledger.phase3_installed_event(
    p_id uuid, p_module_id uuid, p_tenant_id uuid, p_installed_at timestamptz, p_status text)
RETURNS TABLE (event_type varchar(100), event_source varchar(100), event_payload jsonb, correlation_id uuid)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = ''
AS $$
SELECT 'module_installed'::varchar(100),
       'modules'::varchar(100),
       jsonb_build_object('installation_id', p_id, 'module_id', p_module_id,
                          'tenant_id', p_tenant_id, 'installed_at', p_installed_at,
                          'status', p_status),
       p_id
$$;

-- The sets were functions before (inlined, so without a fixed search_path): a database phase 3
-- opened with that version keeps none of them.
DROP FUNCTION IF EXISTS migration_ledger.phase3_listings();
DROP FUNCTION IF EXISTS migration_ledger.phase3_installed_listings();

REVOKE ALL ON migration_ledger.phase3_listings, migration_ledger.phase3_installed_listings FROM PUBLIC;
REVOKE ALL ON FUNCTION migration_ledger.phase3_linkage_choice(uuid, integer, uuid, uuid, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION migration_ledger.phase3_linkage(uuid, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION migration_ledger.phase3_installed_event(uuid, uuid, uuid, timestamptz, text) FROM PUBLIC;
