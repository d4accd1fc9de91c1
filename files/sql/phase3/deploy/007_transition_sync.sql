-- Phase 3, step 0b: open the transition (docs/transition.md). From this commit until
-- playbooks/complete.yml (the cutover) the database keeps the new columns consistent with what
-- today's application writes, by phase 3's own rule (005, migration_ledger.phase3_linkage):
--   * an override inserted, or updated in app_name, client_id or enabled, gets its module,
--     installation and activation_status (BEFORE INSERT / BEFORE UPDATE OF ...); a flip of
--     enabled on a row already linked, only its activation_status (the rest is current);
--   * a new installation links that client's overrides of the module's name and gets its one
--     module_installed event (AFTER INSERT); a deleted installation's overrides are linked
--     again (AFTER DELETE; from phase 4 on, fk_cao_installation ON DELETE CASCADE deletes them
--     first: the strategy's rule);
--   * a listing added, renamed or removed links the overrides of its name(s) again.
-- A write that sets the new columns itself (the next application version) keeps its values.
--
-- Runs in one short transaction BEFORE the plan (010) is computed: every write committed after
-- it goes through the sync, every write before it is in the plan's snapshot - no gap. The plan
-- is built in its own transaction so that nothing the application does waits for it.
--
-- Everything the sync writes is recorded, as phase 3's own writes are: the overrides it
-- changed in migration_ledger.phase3_override_sync (the values before its first write, and the
-- values it wrote last), the events it inserted in migration_ledger.phase3_inserted. The
-- rollback puts back exactly those (revert/005, revert/batches/).
--
-- The trigger functions are SECURITY DEFINER (the application's role may not write
-- migration_ledger) with a fixed search_path: the schema of the migrated tables, then pg_temp.
--
-- They run inside every write of the application, so their cost is its cost. plpgsql plans
-- each statement with the call's values (a "custom" plan) until it trusts a generic one, and
-- for these joins it never does: about 1 ms of planning per call, ten times the write itself
-- (a module installation went from 0.08 to 1.4 ms). plan_cache_mode = force_generic_plan plans
-- each statement once per session; every statement here is written for it (equalities on
-- indexed keys, no "parameter IS NULL OR ..." that only a custom plan can use). For the same
-- reason the check that the transition is open is written out in each trigger function: as a
-- SQL function of its own, called from plpgsql, it was planned again in every transaction.
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

-- Link again, by the rule, the overrides of p_names (of client p_client_id; of every client
-- when it is NULL) and record what changed. Locks those overrides first (id order), then
-- serialises with the other writers of the client's linkage (an override inserted or moved
-- into it takes the same advisory lock, shared), then derives in a fresh snapshot: a
-- concurrent installation or override of the client is either seen here or sees this one.
-- Called only from the trigger functions below, inside their SECURITY DEFINER context: it runs
-- as their owner, with their search_path, plan_cache_mode and enable_seqscan. It has no SET
-- clause and no SECURITY DEFINER of its own: they cost each call a save and restore of those
-- settings, 23 us (measured while every installation still called it: 246 -> 219 us in
-- pg_stat_statements, 100,000 clients, 2026-12-06).
CREATE OR REPLACE FUNCTION migration_ledger.transition_relink(p_client_id uuid, p_names text[])
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    n integer;
    clients uuid[] := ARRAY[p_client_id];
BEGIN
    -- A listing (p_client_id NULL) relinks every client with overrides of its names: one
    -- statement for both cases, on the client index (a generic plan, by its callers'
    -- plan_cache_mode). The clients are looked up only then: as a branch of the declaration,
    -- the generic plan's hash table, sized for every client, was allocated and zeroed at every
    -- installation (a tenth of the CPU under 8 connections).
    IF p_client_id IS NULL THEN
        clients := ARRAY(SELECT DISTINCT o.client_id FROM client_app_overrides AS o
                          WHERE o.app_name = ANY (p_names));
    END IF;
    -- The row locks, then the advisory lock, in one statement: the aggregate reads (and so
    -- locks) every row before the target list takes the lock.
    PERFORM CASE WHEN p_client_id IS NOT NULL
                 THEN pg_advisory_xact_lock(hashtext('pgmigrate:transition'), hashtext(p_client_id::text)) END
       FROM (SELECT count(*) FROM (SELECT 1 FROM client_app_overrides AS cao
                                    WHERE cao.client_id = ANY (clients) AND cao.app_name = ANY (p_names)
                                    ORDER BY cao.id FOR UPDATE) AS rows_locked) AS locked;
    WITH changed AS (
        UPDATE client_app_overrides AS cao
           SET (marketplace_module_id, installation_id, activation_status) =
               (SELECT r.module_id, r.installation_id, r.activation_status
                  FROM migration_ledger.phase3_linkage(cao.client_id, cao.app_name, cao.enabled) AS r)
          FROM client_app_overrides AS prior
         CROSS JOIN LATERAL migration_ledger.phase3_linkage(prior.client_id, prior.app_name, prior.enabled) AS l
         WHERE prior.id = cao.id
           AND prior.client_id = ANY (clients) AND prior.app_name = ANY (p_names)
           AND (l.module_id, l.installation_id, l.activation_status)
               IS DISTINCT FROM (prior.marketplace_module_id, prior.installation_id, prior.activation_status)
        RETURNING cao.id, prior.marketplace_module_id AS old_module_id,
                  prior.installation_id AS old_installation_id, prior.activation_status AS old_status,
                  cao.marketplace_module_id, cao.installation_id, cao.activation_status,
                  l.candidates, l.chosen_by
    )
    INSERT INTO migration_ledger.phase3_override_sync AS s
           (override_id, old_module_id, old_installation_id, old_status,
            module_id, installation_id, new_status, candidates, chosen_by)
    SELECT * FROM changed
    ON CONFLICT (override_id) DO UPDATE
       SET module_id = excluded.module_id, installation_id = excluded.installation_id,
           new_status = excluded.new_status, candidates = excluded.candidates,
           chosen_by = excluded.chosen_by, writes = s.writes + 1, synced_at = clock_timestamp();
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
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
    -- module and installation are current - the installation and listing triggers relink
    -- whenever they change - so only activation_status follows enabled. No rule to evaluate:
    -- the flip is a third of today's writes, and the rule's joins were most of its cost.
    IF TG_OP = 'UPDATE' AND NEW.client_id = OLD.client_id AND NEW.app_name = OLD.app_name
       AND OLD.marketplace_module_id IS NOT NULL AND OLD.activation_status IN ('active', 'inactive') THEN
        st := CASE WHEN NEW.enabled THEN 'active' ELSE 'inactive' END;
        IF st = OLD.activation_status THEN
            RETURN NEW;
        END IF;
        -- The record of the rule's path below, but a known override keeps the module,
        -- installation and rule its record holds: the sync wrote only the status this time.
        INSERT INTO migration_ledger.phase3_override_sync AS s
               (override_id, old_module_id, old_installation_id, old_status,
                module_id, installation_id, new_status, candidates, chosen_by)
        VALUES (NEW.id, NEW.marketplace_module_id, NEW.installation_id, NEW.activation_status,
                NEW.marketplace_module_id, NEW.installation_id, st, NULL, 'kept_linkage')
        ON CONFLICT (override_id) DO UPDATE
           SET new_status = excluded.new_status, writes = s.writes + 1, synced_at = clock_timestamp();
        NEW.activation_status := st;
        RETURN NEW;
    END IF;
    -- A row entering a client's linkage (new, or moved to another client or name) serialises
    -- with that client's installations (transition_relink); a flip needs no lock: an
    -- installation relinks the rows it has locked in a later snapshot.
    IF TG_OP = 'INSERT' OR NEW.client_id IS DISTINCT FROM OLD.client_id
       OR NEW.app_name IS DISTINCT FROM OLD.app_name THEN
        PERFORM pg_advisory_xact_lock_shared(hashtext('pgmigrate:transition'), hashtext(NEW.client_id::text));
    END IF;
    SELECT * INTO l FROM migration_ledger.phase3_linkage(NEW.client_id, NEW.app_name, NEW.enabled);
    IF (l.module_id, l.installation_id, l.activation_status)
       IS NOT DISTINCT FROM (NEW.marketplace_module_id, NEW.installation_id, NEW.activation_status) THEN
        RETURN NEW;
    END IF;
    INSERT INTO migration_ledger.phase3_override_sync AS s
           (override_id, old_module_id, old_installation_id, old_status,
            module_id, installation_id, new_status, candidates, chosen_by)
    VALUES (NEW.id, NEW.marketplace_module_id, NEW.installation_id, NEW.activation_status,
            l.module_id, l.installation_id, l.activation_status, l.candidates, l.chosen_by)
    ON CONFLICT (override_id) DO UPDATE
       SET module_id = excluded.module_id, installation_id = excluded.installation_id,
           new_status = excluded.new_status, candidates = excluded.candidates,
           chosen_by = excluded.chosen_by, writes = s.writes + 1, synced_at = clock_timestamp();
    NEW.marketplace_module_id := l.module_id;
    NEW.installation_id := l.installation_id;
    NEW.activation_status := l.activation_status;
    RETURN NEW;
END
$$;

-- AFTER INSERT OR DELETE ON module_installations.
-- Its plans never scan a whole table (enable_seqscan = off; each statement has its index): a
-- generic plan is kept for the session, and one made while integration_events was recorded
-- empty (a VACUUM since phase 2; step 050 fills it next) read the whole table at every later
-- installation of that session until the next ANALYZE: 33 ms instead of 0.8 at 300,000 events.
CREATE OR REPLACE FUNCTION migration_ledger.transition_sync_installation()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
AS $$
DECLARE
    rec module_installations;
    since timestamptz;
    app text;
BEGIN
    -- The open transition's event window; none open: nothing to derive.
    SELECT t.events_since INTO since FROM migration_ledger.transition AS t
     WHERE t.completed_at IS NULL AND t.rolled_back_at IS NULL ORDER BY t.id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        rec := NEW;
        -- Its one module_installed event, as phase 3's step 050 makes it, in the window of the
        -- open transition; guarded, so it never exists twice.
        IF rec.installed_at >= since THEN
            WITH inserted AS (
                INSERT INTO integration_events (event_type, event_source, event_payload, correlation_id)
                SELECT ev.event_type, ev.event_source, ev.event_payload, ev.correlation_id
                  FROM migration_ledger.phase3_installed_event(rec.id, rec.module_id, rec.tenant_id,
                                                               rec.installed_at, to_jsonb(rec) ->> 'status') AS ev
                 WHERE NOT EXISTS (SELECT 1 FROM integration_events AS e
                                    WHERE e.correlation_id = rec.id AND e.event_type = 'module_installed')
                RETURNING id
            )
            INSERT INTO migration_ledger.phase3_inserted (table_name, row_id)
            SELECT 'integration_events', id FROM inserted;
        END IF;
    ELSE
        rec := OLD;
    END IF;
    -- Most installations are of a module the client has no override of (72% of the bench's):
    -- nothing to lock or link. A probe says so; then the client's advisory lock, and the same
    -- probe in a snapshot taken after it, which sees an override committed meanwhile by a
    -- writer that held the lock. Only where one is found is the relink called (which locks it
    -- holding the advisory lock, as it always did for a row committed after its own lock
    -- statement began). For an installation with nothing to link, the relink's call, row-lock
    -- statement and UPDATE took about 130 us (their executor start-up: sort, row locks, the
    -- rule's joins); the name, the probes and the lock take about 25 (pg_stat_statements,
    -- 100,000 clients: an installation 315 -> 205 us with the event and the relink's SET
    -- clauses below).
    SELECT mm.name INTO app FROM marketplace_modules AS mm WHERE mm.id = rec.module_id;
    IF NOT EXISTS (SELECT 1 FROM client_app_overrides AS cao
                    WHERE cao.client_id = rec.tenant_id AND cao.app_name = app) THEN
        PERFORM pg_advisory_xact_lock(hashtext('pgmigrate:transition'), hashtext(rec.tenant_id::text));
        IF NOT EXISTS (SELECT 1 FROM client_app_overrides AS cao
                        WHERE cao.client_id = rec.tenant_id AND cao.app_name = app) THEN
            RETURN NULL;
        END IF;
    END IF;
    PERFORM migration_ledger.transition_relink(rec.tenant_id, ARRAY[app]);
    RETURN NULL;
END
$$;

-- AFTER INSERT OR UPDATE OF name OR DELETE ON marketplace_modules: a listing added, renamed or
-- removed links every client's overrides of its name(s) again (a rare administrative write,
-- made slower by this: it reads client_app_overrides and locks the rows of those names).
CREATE OR REPLACE FUNCTION migration_ledger.transition_sync_listing()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM migration_ledger.transition
                    WHERE completed_at IS NULL AND rolled_back_at IS NULL) THEN
        RETURN NULL;
    END IF;
    PERFORM migration_ledger.transition_relink(NULL, ARRAY(
        SELECT DISTINCT x FROM unnest(ARRAY[
            CASE WHEN TG_OP <> 'INSERT' THEN OLD.name END,
            CASE WHEN TG_OP <> 'DELETE' THEN NEW.name END]) AS x WHERE x IS NOT NULL));
    RETURN NULL;
END
$$;

-- Only the triggers call them (and they run as their owner): nobody else may.
REVOKE ALL ON FUNCTION migration_ledger.transition_relink(uuid, text[]) FROM PUBLIC;
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
