-- Today's application: add an override for one of the marketplace's apps.
\set cid random(1, :scale)
\set m random(1, 39)
INSERT INTO client_app_overrides (client_id, app_name, enabled)
VALUES (md5('client-' || :cid)::uuid, 'app_' || lpad(:m::text, 2, '0'), true);
