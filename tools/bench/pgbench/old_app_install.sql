-- Today's application: record a module installation (module 0..39 of the marketplace).
\set cid random(1, :scale)
\set m random(0, 39)
INSERT INTO module_installations (module_id, tenant_id, installed_at, status)
VALUES (md5('module-' || :m)::uuid, md5('client-' || :cid)::uuid, now(), 'installed');
