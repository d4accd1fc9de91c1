-- An independent check of the transition (docs/transition.md): is every override's
-- linkage and status what phase 3's rule gives for its client's installations and enabled, and
-- has every installation of the event window exactly one module_installed event? Written
-- apart from the migration's own rule (migrations/ht036/phase3/deploy/005_linkage_rule.sql) on
-- purpose, so a mistake in that one shows here. Read-only; run it under traffic:
--   psql -X -v ON_ERROR_STOP=1 -d DB -f tools/check_transition.sql
-- One row per check: check, failures (0 = consistent), examples (up to 5 ids).
--
-- What a write derives in other rows (an installation's event and the relinking of its
-- client's overrides, a listing's relinking) is consistent once the transition's queue is
-- drained: what the queue still holds is pending, not inconsistent, and is left out of the
-- checks it concerns (the overrides of a queued client and name, or of a queued listing's
-- names; a queued installation may have no event yet). The last row says how much is pending:
-- drain first (transition_drain) to check everything.
WITH pending AS (
    SELECT q.client_id, q.installation_id,
           coalesce(q.names, ARRAY(SELECT m.name FROM marketplace_modules AS m WHERE m.id = q.module_id)) AS names,
           q.enqueued_at
      FROM migration_ledger.transition_queue AS q
), expected AS (
    SELECT o.id, o.marketplace_module_id, o.installation_id, o.activation_status,
           pick.module_id AS want_module, pick.installation_id AS want_installation,
           CASE WHEN pick.module_id IS NULL THEN 'pending'
                WHEN o.enabled THEN 'active' ELSE 'inactive' END AS want_status,
           EXISTS (SELECT 1 FROM pending AS p
                    WHERE (p.client_id = o.client_id OR p.client_id IS NULL)
                      AND o.app_name = ANY (p.names)) AS queued
      FROM client_app_overrides AS o
      LEFT JOIN LATERAL (
            -- installed listings of the name first (oldest listing, newest installation), then
            -- the oldest listing
            SELECT m.id AS module_id,
                   (SELECT i.id FROM module_installations AS i
                     WHERE i.module_id = m.id AND i.tenant_id = o.client_id
                     ORDER BY i.installed_at DESC, i.id LIMIT 1) AS installation_id
              FROM marketplace_modules AS m
             WHERE m.name = o.app_name
             ORDER BY NOT EXISTS (SELECT 1 FROM module_installations AS i
                                   WHERE i.module_id = m.id AND i.tenant_id = o.client_id),
                      m.created_at, m.id
             LIMIT 1) AS pick ON true
), window_start AS (
    SELECT (details ->> 'events_since')::timestamptz AS since
      FROM migration_ledger.history
     WHERE phase = '3' AND direction = 'apply' AND status = 'succeeded'
     ORDER BY id DESC LIMIT 1
)
SELECT 'overrides.linkage' AS check, count(*) AS failures,
       string_agg(id::text, ' ') FILTER (WHERE n <= 5) AS examples
  FROM (SELECT id, row_number() OVER () AS n FROM expected
         WHERE (marketplace_module_id, installation_id) IS DISTINCT FROM (want_module, want_installation)
           AND NOT queued) AS f
UNION ALL
SELECT 'overrides.activation_status', count(*), string_agg(id::text, ' ') FILTER (WHERE n <= 5)
  FROM (SELECT id, row_number() OVER () AS n FROM expected
         WHERE activation_status IS DISTINCT FROM want_status AND NOT queued) AS f
UNION ALL
SELECT 'events.one_per_window_installation', count(*), string_agg(id::text, ' ') FILTER (WHERE n <= 5)
  FROM (SELECT mi.id, row_number() OVER () AS n
          FROM module_installations AS mi, window_start AS w
         WHERE mi.installed_at >= w.since
           AND (SELECT count(*) FROM integration_events AS e
                 WHERE e.correlation_id = mi.id AND e.event_type = 'module_installed')
               NOT IN (1, CASE WHEN EXISTS (SELECT 1 FROM pending AS p WHERE p.installation_id = mi.id)
                               THEN 0 ELSE 1 END)) AS f
UNION ALL
SELECT 'events.window_known', (count(*) = 0)::int, NULL FROM window_start
UNION ALL
-- Not a failure: the work still queued, left out above.
SELECT 'queue.pending', 0,
       count(*) || ' queued' || coalesce(', the oldest for '
                                         || round(extract(epoch FROM clock_timestamp() - min(enqueued_at))::numeric, 3)
                                         || ' s', '')
  FROM pending;
