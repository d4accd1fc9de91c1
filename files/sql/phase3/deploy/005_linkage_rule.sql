-- Phase 3, step 0: THE linkage rule, defined once. The plan (010) and the transition's sync
-- (007) both call it; a rule written twice drifts.
--
-- For an override of client p_client_id named p_app_name with enabled p_enabled:
--   * among the marketplace modules named p_app_name, one the client has installed wins (the
--     oldest such listing, and its newest installation); otherwise the oldest listing
--     (created_at, then id), with no installation;
--   * activation_status is 'active' / 'inactive' from enabled, 'pending' where no module of that
--     name exists (module and installation NULL then);
--   * candidates: how many listings share the name; chosen_by: which rule decided ('none',
--     'unique', 'installed', 'oldest_listing').
-- Exactly one row, always. LANGUAGE sql, STABLE, not STRICT, no SET clause, no SECURITY
-- DEFINER: the planner inlines it into the calling query (CROSS JOIN LATERAL in 010), so it is
-- planned with the statement around it instead of run as an opaque function call per override.
-- It names tables without a schema on purpose: they resolve in the caller's search_path (the
-- migration's session in 010, the fixed search_path of the sync's SECURITY DEFINER functions).
CREATE OR REPLACE FUNCTION migration_ledger.phase3_linkage(p_client_id uuid, p_app_name text, p_enabled boolean)
RETURNS TABLE (module_id uuid, installation_id uuid, activation_status varchar(50),
               candidates integer, chosen_by text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT coalesce(i.module_id, n.oldest),
       i.installation_id,
       (CASE WHEN n.oldest IS NULL THEN 'pending'
             WHEN p_enabled THEN 'active' ELSE 'inactive' END)::varchar(50),
       n.candidates,
       CASE WHEN n.oldest IS NULL THEN 'none'
            WHEN n.candidates = 1 THEN 'unique'
            WHEN i.installation_id IS NOT NULL THEN 'installed'
            ELSE 'oldest_listing' END
  -- The listings of the name: how many, and the oldest (depends on the name only, so the
  -- planner memoizes it across overrides).
  FROM (SELECT count(*)::integer AS candidates,
               (array_agg(mm.id ORDER BY mm.created_at, mm.id))[1] AS oldest
          FROM marketplace_modules AS mm WHERE mm.name = p_app_name) AS n
  -- An installed listing of the name, if the client has one: one index probe.
  LEFT JOIN LATERAL (
        SELECT mm.id AS module_id, mi.id AS installation_id
          FROM marketplace_modules AS mm
          JOIN module_installations AS mi ON mi.module_id = mm.id AND mi.tenant_id = p_client_id
         WHERE mm.name = p_app_name
         ORDER BY mm.created_at, mm.id, mi.installed_at DESC, mi.id
         LIMIT 1) AS i ON true
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
