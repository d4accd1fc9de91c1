-- Phase 3, step 1: compute the module linkage once, into a plan table in the ledger schema.
-- The batched backfill (020) then applies it in short transactions; the plan also records the
-- values each override held before, so a rollback restores exactly those.
--
-- Which module, when names repeat: the rule of 005 (its parts, joined to every override), the one
-- the transition's sync (007) applies to the application's writes. chosen_by records which
-- part of it decided.
-- Rerunnable: overrides already planned keep their plan (and their recorded old values).
--
-- planned_ctid is where the override was when it was planned: the plan is laid out in the
-- table's physical order and the backfill walks it page range by page range, so each batch
-- touches a few contiguous pages of both tables instead of a thousand scattered ones. It is a
-- locality hint only: an override the application moved since (an UPDATE writes a new row
-- version elsewhere) is found by its id.
--
-- One transaction: the plan is created whole or not at all. The indexes are built after the
-- rows are in (a sorted build instead of a million random inserts); the sort and the joins get
-- the memory to run without spilling to disk.
SET LOCAL work_mem = '256MB';
SET LOCAL maintenance_work_mem = '256MB';
-- The rule's joins are cheap; compiling them (JIT) is not.
SET LOCAL jit = off;

CREATE TABLE IF NOT EXISTS migration_ledger.phase3_override_plan (
    override_id          uuid NOT NULL,
    module_id            uuid NOT NULL,
    installation_id      uuid,
    new_status           varchar(50) NOT NULL,
    old_module_id        uuid,
    old_installation_id  uuid,
    old_status           varchar(50),
    candidates           integer NOT NULL,
    chosen_by            text NOT NULL CHECK (chosen_by IN ('unique', 'installed', 'oldest_listing')),
    planned_ctid         tid
);
-- A plan table made before planned_ctid existed: add it, and locate its overrides.
ALTER TABLE migration_ledger.phase3_override_plan ADD COLUMN IF NOT EXISTS planned_ctid tid;
UPDATE migration_ledger.phase3_override_plan AS p
   SET planned_ctid = cao.ctid
  FROM client_app_overrides AS cao
 WHERE p.planned_ctid IS NULL AND cao.id = p.override_id;

-- One row per override whose name is listed, by the rule (005): the name's listings and the
-- client's installed listing joined to every override, then phase3_linkage_choice - the parts
-- phase3_linkage puts together for one override, here as two hash joins over the tables once.
-- Ordering by ctid writes the plan in the table's physical order. An override the transition's
-- sync has already linked (007, opened before this) is left to it: its record is in
-- phase3_override_sync or still in its log, and the backfill must not write it again.
INSERT INTO migration_ledger.phase3_override_plan
SELECT cao.id,
       l.module_id,
       l.installation_id,
       l.activation_status,
       cao.marketplace_module_id,
       cao.installation_id,
       cao.activation_status,
       l.candidates,
       l.chosen_by,
       cao.ctid
FROM client_app_overrides cao
JOIN migration_ledger.phase3_listings AS n ON n.name = cao.app_name
LEFT JOIN migration_ledger.phase3_installed_listings AS i
       ON i.client_id = cao.client_id AND i.name = cao.app_name
CROSS JOIN LATERAL migration_ledger.phase3_linkage_choice(n.oldest, n.candidates, i.module_id,
                                                         i.installation_id, cao.enabled) AS l
WHERE NOT EXISTS (SELECT 1 FROM migration_ledger.phase3_override_plan p WHERE p.override_id = cao.id)
  AND NOT EXISTS (SELECT 1 FROM migration_ledger.phase3_override_sync s WHERE s.override_id = cao.id)
  AND NOT EXISTS (SELECT 1 FROM migration_ledger.phase3_override_sync_log g WHERE g.override_id = cao.id)
ORDER BY cao.ctid;

-- The plan's key (a rerun's NOT EXISTS above, the rollback's joins) and the backfill's range
-- index. The table is the migration's own, new in this transaction when they are built, and
-- never read by the application.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'migration_ledger.phase3_override_plan'::regclass
                      AND contype = 'p') THEN
        ALTER TABLE migration_ledger.phase3_override_plan ADD PRIMARY KEY (override_id);
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS phase3_override_plan_ctid_idx
    ON migration_ledger.phase3_override_plan (planned_ctid);

ANALYZE migration_ledger.phase3_override_plan;
