-- The pg_cron job's procedure (docs/transition.md, "What drains the queue"), created by
-- pgmigrate_drain when it schedules the job `pgmigrate_transition_drain`, dropped when it
-- unschedules it (complete.yml, a rollback that closes the transition, drain.yml stopped).
-- It drains the transition's queue in short transactions (a COMMIT after each call of
-- transition_drain) until p_seconds have passed, or, with p_until_minute_end (pg_cron 1.4, whose
-- next run is the next minute: a run still going then is queued and starts when this one ends),
-- until just before the end of the current minute; it pauses p_pause_ms after a call that found
-- no full batch, and returns at once when the transition is closed. pg_cron sends the CALL as a
-- top-level statement, so the procedure may end its transactions.
CREATE OR REPLACE PROCEDURE migration_ledger.transition_drain_cron_loop(
    p_seconds double precision, p_until_minute_end boolean, p_limit integer, p_pause_ms integer)
LANGUAGE plpgsql
AS $proc$
DECLARE
    v_until timestamptz := CASE WHEN p_until_minute_end
                                THEN date_trunc('minute', clock_timestamp()) + interval '1 minute'
                                     - make_interval(secs => p_pause_ms / 1000.0 + 0.2)
                                ELSE clock_timestamp() + make_interval(secs => p_seconds) END;
    v_applied integer;
BEGIN
    -- For the job's session (a SET LOCAL would end with the first COMMIT). jit off: a call applies
    -- a few hundred entries, and compiling its plans costs more than running them.
    PERFORM set_config('statement_timeout', '10s', false), set_config('jit', 'off', false);
    LOOP
        IF NOT EXISTS (SELECT 1 FROM (SELECT t.completed_at, t.rolled_back_at FROM migration_ledger.transition AS t
                                       ORDER BY t.id DESC LIMIT 1) AS latest
                        WHERE latest.completed_at IS NULL AND latest.rolled_back_at IS NULL) THEN
            RETURN;
        END IF;
        v_applied := migration_ledger.transition_drain(p_limit);
        COMMIT;
        EXIT WHEN clock_timestamp() >= v_until;
        IF v_applied < p_limit THEN
            PERFORM pg_sleep(p_pause_ms / 1000.0);
        END IF;
    END LOOP;
END
$proc$;
REVOKE ALL ON PROCEDURE migration_ledger.transition_drain_cron_loop(double precision, boolean, integer, integer)
    FROM PUBLIC;
