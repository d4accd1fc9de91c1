-- Today's application: flip enabled on one override of a client.
\set cid random(1, :scale)
\set j random(0, 9)
UPDATE client_app_overrides
   SET enabled = NOT enabled, updated_at = now()
 WHERE id = md5('override-' || :cid || '-' || :j)::uuid;
