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
-- by the same text: the listings of every name (phase3_listings), the installed listing of
-- every client and name (phase3_installed_listings), and the choice from those two
-- (phase3_linkage_choice). phase3_linkage puts them together for one override; the plan joins
-- the two sets to the overrides (hash joins over the tables once, instead of two index probes
-- per override: the plan step 2.4 times faster at a million overrides, docs/transition.md).
--
-- All LANGUAGE sql, STABLE or IMMUTABLE, not STRICT, no SET clause, no SECURITY DEFINER: the
-- planner inlines them into the calling query, and pushes the caller's name and client into
-- the sets' GROUP BY and DISTINCT ON, so one override reads only its own rows. They name tables
-- without a schema on purpose: they resolve in the caller's search_path (the migration's
-- session in 010, the fixed search_path of the sync's SECURITY DEFINER functions).
CREATE OR REPLACE FUNCTION migration_ledger.phase3_listings()
RETURNS TABLE (name text, candidates integer, oldest uuid)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT mm.name, count(*)::integer, (array_agg(mm.id ORDER BY mm.created_at, mm.id))[1]
  FROM marketplace_modules AS mm
 GROUP BY mm.name
$$;

CREATE OR REPLACE FUNCTION migration_ledger.phase3_installed_listings()
RETURNS TABLE (client_id uuid, name text, module_id uuid, installation_id uuid)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT DISTINCT ON (mi.tenant_id, mm.name) mi.tenant_id, mm.name, mm.id, mi.id
  FROM module_installations AS mi
  JOIN marketplace_modules AS mm ON mm.id = mi.module_id
 ORDER BY mi.tenant_id, mm.name, mm.created_at, mm.id, mi.installed_at DESC, mi.id
$$;

-- The choice, from the name's listings (NULLs: none) and the client's installed listing of it
-- (NULLs: none). Exactly one row.
CREATE OR REPLACE FUNCTION migration_ledger.phase3_linkage_choice(
    p_oldest uuid, p_candidates integer, p_installed_module_id uuid, p_installation_id uuid,
    p_enabled boolean)
RETURNS TABLE (module_id uuid, installation_id uuid, activation_status varchar(50),
               candidates integer, chosen_by text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT coalesce(p_installed_module_id, p_oldest),
       p_installation_id,
       (CASE WHEN p_oldest IS NULL THEN 'pending'
             WHEN p_enabled THEN 'active' ELSE 'inactive' END)::varchar(50),
       coalesce(p_candidates, 0),
       CASE WHEN p_oldest IS NULL THEN 'none'
            WHEN p_candidates = 1 THEN 'unique'
            WHEN p_installation_id IS NOT NULL THEN 'installed'
            ELSE 'oldest_listing' END
$$;

-- One override. Exactly one row, always.
CREATE OR REPLACE FUNCTION migration_ledger.phase3_linkage(p_client_id uuid, p_app_name text, p_enabled boolean)
RETURNS TABLE (module_id uuid, installation_id uuid, activation_status varchar(50),
               candidates integer, chosen_by text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT c.*
  FROM (SELECT 1) AS one
  LEFT JOIN migration_ledger.phase3_listings() AS n ON n.name = p_app_name
  LEFT JOIN migration_ledger.phase3_installed_listings() AS i
         ON i.client_id = p_client_id AND i.name = p_app_name
 CROSS JOIN LATERAL migration_ledger.phase3_linkage_choice(n.oldest, n.candidates, i.module_id,
                                                          i.installation_id, p_enabled) AS c
$$;

-- The module_installed event of an installation, defined once: phase 3's step 050 inserts one
-- per installation of the event window, the transition's sync one per installation recorded
-- after. Inlined like the rule above.
CREATE OR REPLACE FUNCTION migration_ledger.phase3_installed_event(
    p_id uuid, p_module_id uuid, p_tenant_id uuid, p_installed_at timestamptz, p_status text)
RETURNS TABLE (event_type varchar(100), event_source varchar(100), event_payload jsonb, correlation_id uuid)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT 'module_installed'::varchar(100),
       'modules'::varchar(100),
       jsonb_build_object('installation_id', p_id, 'module_id', p_module_id,
                          'tenant_id', p_tenant_id, 'installed_at', p_installed_at,
                          'status', p_status),
       p_id
$$;
