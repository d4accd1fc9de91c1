-- Phase 3, step 1: compute the module linkage once, into a plan table in the ledger schema.
-- The batched backfill (020) then applies it in short transactions; the plan also records the
-- values each override held before, so a rollback restores exactly those.
--
-- Which module, when names repeat: among the marketplace modules named like the override's
-- app_name, prefer one the override's client has installed (its newest installation); otherwise
-- the oldest listing (created_at, then id). chosen_by records which rule decided.
-- Rerunnable: overrides already planned keep their plan (and their recorded old values).
CREATE TABLE IF NOT EXISTS migration_ledger.phase3_override_plan (
    override_id          uuid PRIMARY KEY,
    module_id            uuid NOT NULL,
    installation_id      uuid,
    new_status           varchar(50) NOT NULL,
    old_module_id        uuid,
    old_installation_id  uuid,
    old_status           varchar(50),
    candidates           integer NOT NULL,
    chosen_by            text NOT NULL CHECK (chosen_by IN ('unique', 'installed', 'oldest_listing'))
);

INSERT INTO migration_ledger.phase3_override_plan
SELECT DISTINCT ON (cao.id)
       cao.id,
       mm.id,
       mi.id,
       CASE WHEN cao.enabled THEN 'active' ELSE 'inactive' END,
       cao.marketplace_module_id,
       cao.installation_id,
       cao.activation_status,
       n.candidates,
       CASE WHEN n.candidates = 1 THEN 'unique'
            WHEN mi.id IS NOT NULL THEN 'installed'
            ELSE 'oldest_listing' END
FROM client_app_overrides cao
JOIN marketplace_modules mm ON mm.name = cao.app_name
JOIN (SELECT name, count(*)::integer AS candidates FROM marketplace_modules GROUP BY name) n
  ON n.name = cao.app_name
LEFT JOIN module_installations mi ON mi.module_id = mm.id AND mi.tenant_id = cao.client_id
WHERE NOT EXISTS (SELECT 1 FROM migration_ledger.phase3_override_plan p WHERE p.override_id = cao.id)
ORDER BY cao.id, (mi.id IS NULL), mm.created_at, mm.id, mi.installed_at DESC, mi.id;

ANALYZE migration_ledger.phase3_override_plan;
