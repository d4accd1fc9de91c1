-- Phase 5, step 4: the strategy's grants, plus read access to handover packages (their policy
-- exists so clients can read their own), and nothing else. The dashboard view is safe to grant:
-- it filters by the tenant rule (020_views.sql).
-- First what default privileges gave PUBLIC, anon and authenticated on the views and functions
-- phase 5 created (Supabase's grant every new table, view and function of the schema to anon,
-- authenticated and service_role; PostgreSQL's own grant PUBLIC EXECUTE on every function) is
-- taken back; service_role keeps what they gave it (027_private.sql of phase 2 says why).
-- Then each privilege this grants that authenticated did not hold is recorded ('grant'), so the
-- rollback revokes exactly those. The views and functions go with their rollback, grants and all.
-- (The loop is the ledger's, migration_ledger.revoke_default_grants, shared with phase 2.)
SELECT migration_ledger.revoke_default_grants(
    ARRAY(SELECT to_regclass(o.name)
            FROM migration_ledger.created_objects o
           WHERE o.phase = '5' AND o.kind = 'view'
             -- each name resolved only as its kind (to_regprocedure raises on a grant's name)
             AND CASE WHEN o.kind = 'view' THEN to_regclass(o.name) END IS NOT NULL
           ORDER BY o.name),
    ARRAY(SELECT to_regprocedure(o.name)
            FROM migration_ledger.created_objects o
           WHERE o.phase = '5' AND o.kind = 'function'
             AND o.name <> 'auth.jwt()'
             AND CASE WHEN o.kind = 'function' THEN to_regprocedure(o.name) END IS NOT NULL
           ORDER BY o.name));

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

GRANT SELECT, INSERT, UPDATE, DELETE ON orchestration_workflows TO authenticated;
GRANT SELECT ON handover_packages TO authenticated;
GRANT SELECT ON unified_client_dashboard TO authenticated;
GRANT EXECUTE ON FUNCTION tenant_client_id(), tenant_sees_all() TO authenticated;
