-- Today's application: read a client's overrides.
\set cid random(1, :scale)
SELECT id, client_id, app_name, enabled, settings, created_at, updated_at
  FROM client_app_overrides
 WHERE client_id = md5('client-' || :cid)::uuid;
