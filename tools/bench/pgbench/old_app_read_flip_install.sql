-- Today's application, one request that does all three writes' work in one transaction: read a
-- client's overrides, flip one, record an installation. The second mix of `make bench-migrate`'s
-- capacity with the transition open: every transaction pays the sync of a flip and of an
-- installation.
\set cid random(1, :scale)
\set j random(0, 9)
\set m random(0, 39)
BEGIN;
SELECT id, client_id, app_name, enabled, settings, created_at, updated_at
  FROM client_app_overrides
 WHERE client_id = md5('client-' || :cid)::uuid;
UPDATE client_app_overrides
   SET enabled = NOT enabled, updated_at = now()
 WHERE id = md5('override-' || :cid || '-' || :j)::uuid;
INSERT INTO module_installations (module_id, tenant_id, installed_at, status)
VALUES (md5('module-' || :m)::uuid, md5('client-' || :cid)::uuid, now(), 'installed');
COMMIT;
