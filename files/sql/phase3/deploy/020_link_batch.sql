-- Phase 3, step 2: link one batch of overrides (plan rows with override_id between :'lo' and
-- :'hi'), run by the backfill in many short transactions. Only rows still holding the values
-- recorded in the plan are written: a rerun skips what is done, and a value the application
-- changed meanwhile is left alone.
UPDATE client_app_overrides AS cao
   SET marketplace_module_id = p.module_id,
       installation_id = p.installation_id,
       activation_status = p.new_status
  FROM migration_ledger.phase3_override_plan AS p
 WHERE p.override_id BETWEEN :'lo' AND :'hi'
   AND cao.id = p.override_id
   AND cao.marketplace_module_id IS NOT DISTINCT FROM p.old_module_id
   AND cao.installation_id IS NOT DISTINCT FROM p.old_installation_id
   AND cao.activation_status IS NOT DISTINCT FROM p.old_status;
