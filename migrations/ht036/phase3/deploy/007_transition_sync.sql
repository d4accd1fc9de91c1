-- Phase 3, step 0b: open the transition (docs/transition.md). From this commit until
-- playbooks/complete.yml (the cutover) the database keeps the new columns consistent with what
-- today's application writes, by phase 3's own rule (005, migration_ledger.phase3_linkage).
--
-- Exact, in the write itself: what a row derives from itself. An override inserted, or updated
-- in app_name, client_id or enabled, gets its module, installation and activation_status
-- (BEFORE INSERT / BEFORE UPDATE OF ...); a flip of enabled on a row already linked, only its
-- activation_status (the rest is current once the queue below is drained).
--
-- Deferred, to a durable queue (migration_ledger.transition_queue, one plain INSERT inside the
-- writer's transaction, so it commits or vanishes with the write): what a write derives in
-- OTHER rows. A new installation's module_installed event and the relinking of that client's
-- overrides of the module's name (AFTER INSERT); a deleted installation's overrides linked
-- again (AFTER DELETE; from phase 4 on, fk_cao_installation ON DELETE CASCADE deletes them
-- first: the strategy's rule); a listing added, renamed or removed, the overrides of its
-- name(s). transition_drain() applies the queue in the caller's transaction, oldest first;
-- the migration drains it before phase 6's validator, the cutover and any rollback, and while
-- migrate.yml runs (module_utils/pgmigrate_queue.py).
--
-- A write that sets the new columns itself (the next application version) keeps its values.
--
-- Runs in one short transaction BEFORE the plan (010) is computed: every write committed after
-- it goes through the sync, every write before it is in the plan's snapshot - no gap. The plan
-- is built in its own transaction so that nothing the application does waits for it.
--
-- Everything the sync writes is recorded, as phase 3's own writes are: each write of an
-- override appends one row to migration_ledger.phase3_override_sync_log (no index: the cheapest
-- durable record), which the drain folds into phase3_override_sync (per override, the values
-- before the sync's first write and the values it wrote last); the events it inserts go to
-- migration_ledger.phase3_inserted. The rollback folds what is left and puts back exactly
-- those (revert/005, revert/batches/).
--
-- The trigger functions are SECURITY DEFINER (the application's role may not write
-- migration_ledger) with a fixed search_path: the schema of the migrated tables, then pg_temp.
--
-- They run inside every write of the application, so their cost is its cost. plpgsql plans
-- each statement with the call's values (a "custom" plan) until it trusts a generic one, and
-- for the rule's joins it never does (planning cost ten times the write itself).
-- plan_cache_mode = force_generic_plan plans each statement once per session; every statement
-- here is written for it (equalities on indexed keys, no "parameter IS NULL OR ..." that only
-- a custom plan can use). For the same reason the check that the transition is open is
-- written out in each function: as a SQL function of its own, called from plpgsql, it was
-- planned again in every transaction.
-- :'events_since' is the run's event window, fixed before this file runs.
SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);

CREATE TABLE IF NOT EXISTS migration_ledger.transition (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    opened_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    events_since  timestamptz NOT NULL,
    -- The cutover (complete.yml) or a rollback of phase 3 closes it.
    completed_at  timestamptz,
    completed_by  text,
    completed_run uuid,
    rolled_back_at timestamptz
);
-- A rerun of the plan step keeps the open transition; a reopened one (after a rollback or a
-- cutover) starts a new row.
INSERT INTO migration_ledger.transition (events_since)
SELECT :'events_since'::timestamptz
 WHERE NOT EXISTS (SELECT 1 FROM migration_ledger.transition
                    WHERE completed_at IS NULL AND rolled_back_at IS NULL);

CREATE TABLE IF NOT EXISTS migration_ledger.phase3_override_sync (
    override_id          uuid PRIMARY KEY,
    -- what the override held before the sync first wrote it
    old_module_id        uuid,
    old_installation_id  uuid,
    old_status           varchar(50),
    -- what the sync wrote last
    module_id            uuid,
    installation_id      uuid,
    new_status           varchar(50),
    candidates           integer,
    chosen_by            text,
    writes               integer NOT NULL DEFAULT 1,
    first_synced_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    synced_at            timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The record of every write the sync makes to an override, appended in the write: no key and
-- no index, one heap insert (an upsert into phase3_override_sync per flip cost a fifth of the
-- flip: docs/benchmarks.md). Folded into phase3_override_sync by transition_fold_sync_log.
-- chosen_by 'kept_linkage': the write set only activation_status (a flip of a linked row).
CREATE TABLE IF NOT EXISTS migration_ledger.phase3_override_sync_log (
    id                   bigint GENERATED ALWAYS AS IDENTITY,
    override_id          uuid NOT NULL,
    old_module_id        uuid,
    old_installation_id  uuid,
    old_status           varchar(50),
    module_id            uuid,
    installation_id      uuid,
    new_status           varchar(50),
    candidates           integer,
    chosen_by            text,
    synced_at            timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The deferred work: one row per installation inserted or deleted (client_id, module_id; an
-- inserted one also its event's fields) or listing changed (names; client_id NULL). Each is
-- applied by deriving from the database as it is when drained, so applying one late, or after
-- a later one, gives the same result.
CREATE TABLE IF NOT EXISTS migration_ledger.transition_queue (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    enqueued_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    client_id        uuid,
    module_id        uuid,
    names            text[],
    installation_id  uuid,
    installed_at     timestamptz,
    status           text
);

-- The relink is transition_drain's own statement (one home); a transition opened by an earlier
-- release had it as a function of its own, without a fixed search_path: gone on a rerun.
DROP FUNCTION IF EXISTS migration_ledger.transition_relink(uuid, text[]);

-- Fold up to p_limit rows of the log (all: NULL), oldest first, into phase3_override_sync: per
-- override, the values before its first write (when it has no record yet), the status it
-- wrote last, and the module, installation and rule of its last write that derived them (a
-- status-only write keeps those of the record). Two writes of one override are ordered by its
-- row lock, so their log ids are in the order of the writes and any visible set of log rows
-- folds correctly in id order; one folder at a time (an advisory lock, waited for only when
-- p_wait). Returns the log rows folded.
-- It reads the whole log (no index: a sequential scan, allowed here though its caller forbids
-- them), and never compiles its plan (jit = off): a generic plan costed with a sequential scan
-- disabled crossed the JIT thresholds and compiled at every call, seconds for a few rows.
CREATE OR REPLACE FUNCTION migration_ledger.transition_fold_sync_log(p_limit integer, p_wait boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT SET enable_seqscan = on SET jit = off
AS $$
DECLARE
    n integer;
BEGIN
    IF p_wait THEN
        PERFORM pg_advisory_xact_lock(hashtext('pgmigrate:transition-fold'), 0);
    ELSIF NOT pg_try_advisory_xact_lock(hashtext('pgmigrate:transition-fold'), 0) THEN
        RETURN 0;
    END IF;
    -- Per override, the ids of its first and last log rows and of its last derived one (not
    -- 'kept_linkage'), then those rows' values by id: plain aggregates and three hash lookups,
    -- where thirteen ordered array_agg sorted the batch once each (docs/benchmarks.md).
    WITH batch AS MATERIALIZED (
        DELETE FROM migration_ledger.phase3_override_sync_log AS g
         WHERE g.ctid = ANY (ARRAY(SELECT l.ctid FROM migration_ledger.phase3_override_sync_log AS l
                                    ORDER BY l.id LIMIT p_limit))
        RETURNING g.*
    ), per_override AS (
        SELECT b.override_id, min(b.id) AS first_id, max(b.id) AS last_id,
               max(b.id) FILTER (WHERE b.chosen_by IS DISTINCT FROM 'kept_linkage') AS derived_id,
               count(*)::integer AS writes, min(b.synced_at) AS first_synced_at, max(b.synced_at) AS synced_at
          FROM batch AS b
         GROUP BY b.override_id
    ), merged AS (
        -- The module, installation and rule of the last derived write; a batch of status-only
        -- writes carries its first row's (chosen_by 'kept_linkage'), which the record keeps.
        INSERT INTO migration_ledger.phase3_override_sync AS s
               (override_id, old_module_id, old_installation_id, old_status, module_id, installation_id,
                new_status, candidates, chosen_by, writes, first_synced_at, synced_at)
        SELECT o.override_id, f.old_module_id, f.old_installation_id, f.old_status,
               CASE WHEN o.derived_id IS NULL THEN f.module_id ELSE d.module_id END,
               CASE WHEN o.derived_id IS NULL THEN f.installation_id ELSE d.installation_id END,
               l.new_status,
               CASE WHEN o.derived_id IS NULL THEN f.candidates ELSE d.candidates END,
               CASE WHEN o.derived_id IS NULL THEN f.chosen_by ELSE d.chosen_by END,
               o.writes, o.first_synced_at, o.synced_at
          FROM per_override AS o
          JOIN batch AS f ON f.id = o.first_id
          JOIN batch AS l ON l.id = o.last_id
          LEFT JOIN batch AS d ON d.id = o.derived_id
        -- A status-only batch ('kept_linkage') keeps the record's module, installation and rule.
        ON CONFLICT (override_id) DO UPDATE
           SET module_id = CASE WHEN excluded.chosen_by = 'kept_linkage' THEN s.module_id ELSE excluded.module_id END,
               installation_id = CASE WHEN excluded.chosen_by = 'kept_linkage' THEN s.installation_id
                                      ELSE excluded.installation_id END,
               candidates = CASE WHEN excluded.chosen_by = 'kept_linkage' THEN s.candidates ELSE excluded.candidates END,
               chosen_by = CASE WHEN excluded.chosen_by = 'kept_linkage' THEN s.chosen_by ELSE excluded.chosen_by END,
               new_status = excluded.new_status, writes = s.writes + excluded.writes,
               synced_at = excluded.synced_at
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM batch) INTO n FROM (SELECT count(*) FROM merged) AS done;
    RETURN n;
END
$$;

-- Apply up to p_limit of the oldest queued entries, in the CALLER's transaction, and delete
-- them there: committed, each was applied once; rolled back (a killed worker, a crash), each is
-- still queued. Entries are claimed FOR UPDATE SKIP LOCKED (two drainers never wait for each
-- other). A client whose advisory lock an application transaction holds shared (an override
-- being inserted or moved into it), or one of whose overrides of the names an application
-- transaction holds locked, is never waited for: its entries stay queued for a later call
-- (pg_try_advisory_xact_lock; the overrides locked SKIP LOCKED, and a client with one skipped is
-- left). The linkage is derived in a statement begun after those locks (READ COMMITTED: a new
-- snapshot), which sees every override committed before; none can enter meanwhile. The work
-- of the whole batch is done set-wise, a few statements for all its entries: a statement's
-- start-up, not its rows, was most of the cost of an entry applied on its own. A listing's
-- entry (rare: every client of its names) has its overrides locked on its own, waiting for row
-- locks under the caller's lock_timeout, in a subtransaction (one that times out is left
-- queued); the relink that follows is the same statement for both kinds (its one home).
-- When no transition is open (a rollback closed it, revert/first/), entries are deleted
-- without being applied, as the triggers derive nothing then. Also folds the sync's log
-- (transition_fold_sync_log). Its plans are generic (planned once per session), never a table
-- scan (a plan made while integration_events was recorded empty would scan it at every
-- installation), never compiled (jit: the disabled scans' costs crossed its thresholds).
-- Returns the entries applied (or discarded).
CREATE OR REPLACE FUNCTION migration_ledger.transition_drain(p_limit integer DEFAULT 500)
RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off
AS $$
DECLARE
    since timestamptz;
    ids bigint[];
    clients uuid[];
    held uuid[];
    blocked uuid[];
    relink uuid[];
    locked uuid[];
    done bigint[];
    e record;
    n integer;
BEGIN
    SELECT t.events_since INTO since FROM migration_ledger.transition AS t
     WHERE t.completed_at IS NULL AND t.rolled_back_at IS NULL ORDER BY t.id DESC LIMIT 1;
    IF NOT FOUND THEN
        WITH gone AS (
            DELETE FROM migration_ledger.transition_queue AS q
             WHERE q.id = ANY (ARRAY(SELECT c.id FROM migration_ledger.transition_queue AS c
                                      ORDER BY c.id LIMIT p_limit FOR UPDATE SKIP LOCKED))
            RETURNING 1)
        SELECT count(*) INTO n FROM gone;
        PERFORM migration_ledger.transition_fold_sync_log(greatest(p_limit, 1) * 20);
        RETURN n;
    END IF;
    -- Claim the oldest entries, and take the advisory lock of each client they name (try).
    SELECT array_agg(c.id), array_agg(DISTINCT c.client_id) FILTER (WHERE c.client_id IS NOT NULL)
      INTO ids, clients
      FROM (SELECT q.id, q.client_id FROM migration_ledger.transition_queue AS q
             ORDER BY q.id LIMIT p_limit FOR UPDATE SKIP LOCKED) AS c;
    IF ids IS NULL THEN
        PERFORM migration_ledger.transition_fold_sync_log(greatest(p_limit, 1) * 20);
        RETURN 0;
    END IF;
    held := ARRAY(SELECT c FROM unnest(clients) AS c
                   WHERE pg_try_advisory_xact_lock(hashtext('pgmigrate:transition'), hashtext(c::text)));
    -- The overrides those entries relink, found once (the client index, one probe per client
    -- and name) and then locked by id without waiting; a client with one held by an
    -- application transaction is left (its entries stay queued, the locks taken on its other
    -- rows go with this transaction). One probe instead of two: finding and locking the rows
    -- in two scans of the client index was 40% of a call.
    WITH present AS MATERIALIZED (
        SELECT cao.id, cao.client_id
          FROM (SELECT DISTINCT q.client_id, mm.name
                  FROM migration_ledger.transition_queue AS q
                  JOIN marketplace_modules AS mm ON mm.id = q.module_id
                 WHERE q.id = ANY (ids) AND q.client_id = ANY (held)) AS p
          JOIN client_app_overrides AS cao ON cao.client_id = p.client_id AND cao.app_name = p.name
    ), locked AS (
        SELECT cao.id FROM client_app_overrides AS cao
         WHERE cao.id IN (SELECT pr.id FROM present AS pr)
         ORDER BY cao.id
           FOR UPDATE OF cao SKIP LOCKED
    )
    SELECT array_agg(pr.id) FILTER (WHERE l.id IS NOT NULL),
           array_agg(DISTINCT pr.client_id) FILTER (WHERE l.id IS NULL)
      INTO relink, blocked
      FROM present AS pr LEFT JOIN locked AS l ON l.id = pr.id;
    IF blocked IS NOT NULL THEN
        held := ARRAY(SELECT c FROM unnest(held) AS c WHERE NOT (c = ANY (blocked)));
        relink := ARRAY(SELECT o.id FROM client_app_overrides AS o
                         WHERE o.id = ANY (relink) AND NOT (o.client_id = ANY (blocked)));
    END IF;
    done := ARRAY(SELECT q.id FROM migration_ledger.transition_queue AS q
                   WHERE q.id = ANY (ids) AND q.client_id = ANY (held));
    -- A listing's entries (rare: every client's overrides of its names), each locked on its
    -- own, waiting for the application's row locks under the caller's lock_timeout, in a
    -- subtransaction: one that times out is left queued, and the rows it had locked released.
    FOR e IN SELECT q.id, q.names FROM migration_ledger.transition_queue AS q
              WHERE q.id = ANY (ids) AND q.client_id IS NULL ORDER BY q.id LOOP
        BEGIN
            locked := ARRAY(SELECT cao.id FROM client_app_overrides AS cao
                             WHERE cao.app_name = ANY (e.names) ORDER BY cao.id FOR UPDATE);
            relink := coalesce(relink, '{}') || locked;
            done := done || e.id;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    -- The one relink: every override locked above, derived by the rule in a snapshot taken
    -- after the locks (none can change or enter meanwhile), rewritten where it differs, each
    -- change recorded. The rule runs once per override (the same values set as compared: the
    -- row is locked, so it is the row read).
    IF relink IS NOT NULL THEN
        WITH changed AS (
            UPDATE client_app_overrides AS cao
               SET (marketplace_module_id, installation_id, activation_status) =
                   (l.module_id, l.installation_id, l.activation_status)
              FROM client_app_overrides AS prior
             CROSS JOIN LATERAL migration_ledger.phase3_linkage(prior.client_id, prior.app_name, prior.enabled) AS l
             WHERE prior.id = ANY (relink) AND cao.id = prior.id
               AND (l.module_id, l.installation_id, l.activation_status)
                   IS DISTINCT FROM (prior.marketplace_module_id, prior.installation_id, prior.activation_status)
            RETURNING cao.id, prior.marketplace_module_id AS old_module_id,
                      prior.installation_id AS old_installation_id, prior.activation_status AS old_status,
                      cao.marketplace_module_id, cao.installation_id, cao.activation_status,
                      l.candidates, l.chosen_by
        )
        INSERT INTO migration_ledger.phase3_override_sync_log
               (override_id, old_module_id, old_installation_id, old_status,
                module_id, installation_id, new_status, candidates, chosen_by)
        SELECT * FROM changed;
    END IF;
    -- Each installation's one module_installed event, as phase 3's step 050 makes it, in the
    -- window of the open transition; guarded, so never twice.
    WITH inserted AS (
        INSERT INTO integration_events (event_type, event_source, event_payload, correlation_id)
        SELECT ev.event_type, ev.event_source, ev.event_payload, ev.correlation_id
          FROM migration_ledger.transition_queue AS q
         CROSS JOIN LATERAL migration_ledger.phase3_installed_event(q.installation_id, q.module_id, q.client_id,
                                                                    q.installed_at, q.status) AS ev
         WHERE q.id = ANY (ids) AND q.client_id = ANY (held)
           AND q.installation_id IS NOT NULL AND q.installed_at >= since
           AND NOT EXISTS (SELECT 1 FROM integration_events AS ie
                            WHERE ie.correlation_id = q.installation_id AND ie.event_type = 'module_installed')
        RETURNING id
    )
    INSERT INTO migration_ledger.phase3_inserted (table_name, row_id)
    SELECT 'integration_events', id FROM inserted;
    DELETE FROM migration_ledger.transition_queue AS q WHERE q.id = ANY (done);
    PERFORM migration_ledger.transition_fold_sync_log(greatest(p_limit, 1) * 20);
    RETURN cardinality(done);
END
$$;

-- The queue's depth and the age of its oldest entry (status, watch, Prometheus, the validator).
CREATE OR REPLACE FUNCTION migration_ledger.transition_queue_state()
RETURNS TABLE (depth bigint, oldest_enqueued_at timestamptz, oldest_age_s double precision)
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
SELECT count(*), min(q.enqueued_at),
       coalesce(extract(epoch FROM clock_timestamp() - min(q.enqueued_at))::double precision, 0)
  FROM migration_ledger.transition_queue AS q
$$;

-- BEFORE INSERT OR UPDATE OF app_name, client_id, enabled ON client_app_overrides.
CREATE OR REPLACE FUNCTION migration_ledger.transition_sync_override()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
    SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    l record;
    st varchar(50);
BEGIN
    -- A closed transition (a rollback under way, revert/first/; the cutover) derives nothing:
    -- read in each write's own snapshot.
    IF NOT EXISTS (SELECT 1 FROM migration_ledger.transition
                    WHERE completed_at IS NULL AND rolled_back_at IS NULL) THEN
        RETURN NEW;
    END IF;
    -- The next application version sets the new columns itself: its values stand.
    IF TG_OP = 'INSERT' THEN
        IF NEW.marketplace_module_id IS NOT NULL OR NEW.installation_id IS NOT NULL
           OR NEW.activation_status IS DISTINCT FROM 'pending' THEN
            RETURN NEW;
        END IF;
    ELSIF (NEW.marketplace_module_id, NEW.installation_id, NEW.activation_status)
          IS DISTINCT FROM (OLD.marketplace_module_id, OLD.installation_id, OLD.activation_status) THEN
        RETURN NEW;
    END IF;
    -- A flip of a linked row (same client and name, a module, 'active' or 'inactive'): its
    -- module and installation are the drain's business (it relinks whenever an installation or
    -- listing changes them), so only activation_status follows enabled. No rule to evaluate:
    -- the flip is a third of today's writes, and the rule's joins were most of its cost.
    IF TG_OP = 'UPDATE' AND NEW.client_id = OLD.client_id AND NEW.app_name = OLD.app_name
       AND OLD.marketplace_module_id IS NOT NULL AND OLD.activation_status IN ('active', 'inactive') THEN
        st := CASE WHEN NEW.enabled THEN 'active' ELSE 'inactive' END;
        IF st = OLD.activation_status THEN
            RETURN NEW;
        END IF;
        -- The record of the rule's path below, marked 'kept_linkage': the sync wrote only the
        -- status this time, and the fold keeps the module, installation and rule of the record.
        INSERT INTO migration_ledger.phase3_override_sync_log
               (override_id, old_module_id, old_installation_id, old_status,
                module_id, installation_id, new_status, candidates, chosen_by)
        VALUES (NEW.id, NEW.marketplace_module_id, NEW.installation_id, NEW.activation_status,
                NEW.marketplace_module_id, NEW.installation_id, st, NULL, 'kept_linkage');
        NEW.activation_status := st;
        RETURN NEW;
    END IF;
    -- A row entering a client's linkage (new, or moved to another client or name) serialises
    -- with the drain's relinking of that client (transition_drain takes the lock exclusive,
    -- without waiting): either it derives after the drain's commit and sees its installation,
    -- or the drain, which leaves the entry queued meanwhile, derives after this commit and
    -- sees the row. A flip needs no lock: the drain locks the rows it relinks.
    IF TG_OP = 'INSERT' OR NEW.client_id IS DISTINCT FROM OLD.client_id
       OR NEW.app_name IS DISTINCT FROM OLD.app_name THEN
        PERFORM pg_advisory_xact_lock_shared(hashtext('pgmigrate:transition'), hashtext(NEW.client_id::text));
    END IF;
    SELECT * INTO l FROM migration_ledger.phase3_linkage(NEW.client_id, NEW.app_name, NEW.enabled);
    IF (l.module_id, l.installation_id, l.activation_status)
       IS NOT DISTINCT FROM (NEW.marketplace_module_id, NEW.installation_id, NEW.activation_status) THEN
        RETURN NEW;
    END IF;
    INSERT INTO migration_ledger.phase3_override_sync_log
           (override_id, old_module_id, old_installation_id, old_status,
            module_id, installation_id, new_status, candidates, chosen_by)
    VALUES (NEW.id, NEW.marketplace_module_id, NEW.installation_id, NEW.activation_status,
            l.module_id, l.installation_id, l.activation_status, l.candidates, l.chosen_by);
    NEW.marketplace_module_id := l.module_id;
    NEW.installation_id := l.installation_id;
    NEW.activation_status := l.activation_status;
    RETURN NEW;
END
$$;

-- AFTER INSERT OR DELETE ON module_installations: one plain INSERT into the queue, the whole of
-- the sync's price for an installation. No check that the transition is open: an entry queued
-- once it is closed is discarded by the drain (a rollback drops this trigger at its end).
CREATE OR REPLACE FUNCTION migration_ledger.transition_sync_installation()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- The event's fields: the status read from the row as JSON, as step 050 does.
        INSERT INTO migration_ledger.transition_queue (client_id, module_id, installation_id, installed_at, status)
        VALUES (NEW.tenant_id, NEW.module_id, NEW.id, NEW.installed_at, to_jsonb(NEW) ->> 'status');
    ELSE
        INSERT INTO migration_ledger.transition_queue (client_id, module_id) VALUES (OLD.tenant_id, OLD.module_id);
    END IF;
    RETURN NULL;
END
$$;

-- AFTER INSERT OR UPDATE OF name OR DELETE ON marketplace_modules: a listing added, renamed or
-- removed: every client's overrides of its name(s) are linked again by the drain (a rare
-- administrative write; the drain reads client_app_overrides and locks the rows of those names).
CREATE OR REPLACE FUNCTION migration_ledger.transition_sync_listing()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    INSERT INTO migration_ledger.transition_queue (names)
    SELECT ARRAY(SELECT DISTINCT x FROM unnest(ARRAY[
        CASE WHEN TG_OP <> 'INSERT' THEN OLD.name END,
        CASE WHEN TG_OP <> 'DELETE' THEN NEW.name END]) AS x WHERE x IS NOT NULL);
    RETURN NULL;
END
$$;

-- Only the triggers and the migration's login (their owner) call them: nobody else may.
REVOKE ALL ON FUNCTION migration_ledger.transition_fold_sync_log(integer, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION migration_ledger.transition_drain(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION migration_ledger.transition_queue_state() FROM PUBLIC;
REVOKE ALL ON FUNCTION migration_ledger.transition_sync_override() FROM PUBLIC;
REVOKE ALL ON FUNCTION migration_ledger.transition_sync_installation() FROM PUBLIC;
REVOKE ALL ON FUNCTION migration_ledger.transition_sync_listing() FROM PUBLIC;

-- The triggers, each taking a brief SHARE ROW EXCLUSIVE lock under the runner's lock_timeout.
-- CREATE OR REPLACE TRIGGER: a rerun changes nothing.
CREATE OR REPLACE TRIGGER pgmigrate_transition_override
    BEFORE INSERT OR UPDATE OF app_name, client_id, enabled ON client_app_overrides
    FOR EACH ROW EXECUTE FUNCTION migration_ledger.transition_sync_override();
CREATE OR REPLACE TRIGGER pgmigrate_transition_installation
    AFTER INSERT OR DELETE ON module_installations
    FOR EACH ROW EXECUTE FUNCTION migration_ledger.transition_sync_installation();
CREATE OR REPLACE TRIGGER pgmigrate_transition_listing
    AFTER INSERT OR UPDATE OF name OR DELETE ON marketplace_modules
    FOR EACH ROW EXECUTE FUNCTION migration_ledger.transition_sync_listing();
