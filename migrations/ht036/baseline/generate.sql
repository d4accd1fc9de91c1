-- Synthetic agency data, generated inside the server (fast at any scale).
-- Variable: scale = number of clients (psql: -v scale=100000). Deterministic: the same scale
-- always yields the same rows, ids included (md5-derived uuids, no random()).
--
-- Shape, per client i (1..scale):
--   * 10 app overrides, app names drawn from 45 names: 40 listed in the marketplace, 5 unknown;
--   * 3 module installations, installed 0..59 days before the reference time, so some are
--     newer and some older than 7 days; installation k of client i is of module (i*7+k*13) % 40;
--   * deployments: clients with i % 5 = 0 have none; of the others, i % 5 in (1, 2) are
--     'deployed', the rest 'pending' or 'failed'.
-- Plus: scale/20 overrides whose client does not exist (orphans, 5% on top), and the module name
-- 'analytics' listed twice (the second, newer listing is a re-publication).
-- Reference time: the generation time, truncated to the hour, so "last 7 days" is well defined.

INSERT INTO marketplace_modules (id, name, version, publisher, created_at)
SELECT md5('module-' || m)::uuid,
       CASE WHEN m = 0 THEN 'analytics' ELSE 'app_' || lpad(m::text, 2, '0') END,
       '1.' || (m % 5) || '.0',
       'publisher_' || (m % 7),
       date_trunc('hour', now()) - interval '400 days' + m * interval '1 day'
FROM generate_series(0, 39) AS m;

-- The duplicate listing: same name, different id, newer.
INSERT INTO marketplace_modules (id, name, version, publisher, created_at)
VALUES (md5('module-dup-analytics')::uuid, 'analytics', '2.0.0', 'publisher_dup',
        date_trunc('hour', now()) - interval '30 days');

INSERT INTO clients_enhanced (id, name, email, plan, created_at, updated_at)
SELECT md5('client-' || i)::uuid,
       'Client ' || i,
       'owner' || i || '@client' || i || '.example',
       (ARRAY['standard', 'premium', 'enterprise'])[1 + i % 3],
       date_trunc('hour', now()) - interval '500 days' + (i % 480) * interval '1 day',
       date_trunc('hour', now()) - (i % 30) * interval '1 day'
FROM generate_series(1, :scale) AS i;

-- App name j of client i: module index (i + j*3) % 45; indexes 40..44 are unknown apps,
-- index 0 is 'analytics' (the duplicated name).
INSERT INTO client_app_overrides (id, client_id, app_name, enabled, settings, created_at, updated_at)
SELECT md5('override-' || i || '-' || j)::uuid,
       md5('client-' || i)::uuid,
       CASE WHEN (i + j * 3) % 45 = 0 THEN 'analytics'
            WHEN (i + j * 3) % 45 < 40 THEN 'app_' || lpad(((i + j * 3) % 45)::text, 2, '0')
            ELSE 'legacy_app_' || ((i + j * 3) % 45) END,
       (i + j) % 4 <> 0,
       jsonb_build_object('theme', 't' || (j % 3), 'limit', (i * j) % 100),
       date_trunc('hour', now()) - interval '300 days' + ((i + j) % 290) * interval '1 day',
       date_trunc('hour', now()) - interval '10 days' + ((i + j) % 5) * interval '1 day'
FROM generate_series(1, :scale) AS i, generate_series(0, 9) AS j;

-- Orphans: overrides of clients that no longer exist.
INSERT INTO client_app_overrides (id, client_id, app_name, enabled, created_at, updated_at)
SELECT md5('orphan-override-' || o)::uuid,
       md5('deleted-client-' || o)::uuid,
       'app_' || lpad((o % 40)::text, 2, '0'),
       o % 2 = 0,
       date_trunc('hour', now()) - interval '200 days',
       date_trunc('hour', now()) - interval '200 days'
FROM generate_series(1, greatest(1, :scale / 20)) AS o;

INSERT INTO module_installations (id, module_id, tenant_id, installed_at, status)
SELECT md5('installation-' || i || '-' || k)::uuid,
       CASE WHEN (i * 7 + k * 13) % 40 = 0 AND i % 2 = 0 THEN md5('module-dup-analytics')::uuid
            ELSE md5('module-' || ((i * 7 + k * 13) % 40))::uuid END,
       md5('client-' || i)::uuid,
       date_trunc('hour', now()) - ((i * 3 + k * 11) % 60) * interval '1 day' - interval '1 hour',
       CASE WHEN (i + k) % 10 = 0 THEN 'failed' ELSE 'installed' END
FROM generate_series(1, :scale) AS i, generate_series(0, 2) AS k;

INSERT INTO client_deployments (id, client_id, environment, status, deployed_at, created_at)
SELECT md5('deployment-' || i)::uuid,
       md5('client-' || i)::uuid,
       'production',
       CASE i % 5 WHEN 1 THEN 'deployed' WHEN 2 THEN 'deployed' WHEN 3 THEN 'pending' ELSE 'failed' END,
       CASE WHEN i % 5 IN (1, 2) THEN date_trunc('hour', now()) - (i % 90) * interval '1 day' END,
       date_trunc('hour', now()) - (i % 100) * interval '1 day'
FROM generate_series(1, :scale) AS i
WHERE i % 5 <> 0;

ANALYZE clients_enhanced, marketplace_modules, module_installations, client_app_overrides,
        client_deployments;
