-- Phase 5, step 4: the strategy's grants, plus read access to handover packages (their policy
-- exists so clients can read their own), and nothing else. The dashboard view is safe to grant:
-- it filters by the tenant rule (020_views.sql).
-- First what default privileges gave PUBLIC, anon and authenticated on the views and functions
-- phase 5 created (Supabase's grant every new table, view and function of the schema to anon,
-- authenticated and service_role; PostgreSQL's own grant PUBLIC EXECUTE on every function) is
-- taken back; service_role keeps what they gave it (027_private.sql of phase 2 says why).
-- Then each privilege this grants that authenticated did not hold is recorded ('grant'), so the
-- rollback revokes exactly those. The views and functions go with their rollback, grants and all.
DO $$
DECLARE
    grantees text;
    item record;
BEGIN
    SELECT string_agg(', ' || quote_ident(r), '') INTO grantees
      FROM unnest(ARRAY['anon', 'authenticated']) AS r
     WHERE to_regrole(r) IS NOT NULL;
    FOR item IN
        SELECT o.kind, o.name
          FROM migration_ledger.created_objects o
         WHERE o.phase = '5' AND o.kind IN ('view', 'function')
           AND o.name <> 'auth.jwt()'
           -- each name resolved only as its kind (to_regprocedure raises on a grant's name)
           AND CASE o.kind WHEN 'view' THEN to_regclass(o.name)::oid
                           WHEN 'function' THEN to_regprocedure(o.name)::oid END IS NOT NULL
         ORDER BY o.kind, o.name
    LOOP
        IF item.kind = 'view' THEN
            EXECUTE format('REVOKE ALL ON TABLE %I FROM PUBLIC%s', item.name, coalesce(grantees, ''));
        ELSE
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC%s',
                           to_regprocedure(item.name), coalesce(grantees, ''));
        END IF;
    END LOOP;

    INSERT INTO migration_ledger.created_objects (kind, name, phase)
    SELECT 'grant', g.tbl || ' ' || g.priv, '5'
      FROM (VALUES ('orchestration_workflows', 'SELECT'), ('orchestration_workflows', 'INSERT'),
                   ('orchestration_workflows', 'UPDATE'), ('orchestration_workflows', 'DELETE'),
                   ('handover_packages', 'SELECT')) AS g (tbl, priv)
     WHERE NOT EXISTS (SELECT 1
                         FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) AS a
                        WHERE c.oid = to_regclass(g.tbl)
                          AND a.grantee = to_regrole('authenticated')
                          AND a.privilege_type = g.priv)
    ON CONFLICT DO NOTHING;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON orchestration_workflows TO authenticated;
GRANT SELECT ON handover_packages TO authenticated;
GRANT SELECT ON unified_client_dashboard TO authenticated;
GRANT EXECUTE ON FUNCTION tenant_client_id(), tenant_sees_all() TO authenticated;
