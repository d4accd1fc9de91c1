-- The 48-hour watch's samples (strategy 4.2; roles/watch), created the first time watch.yml
-- runs after phase 6. One row per run: the figures of the sample, its alerts (with how often
-- each repeated) and the escalations sent; `counters` keeps what the next sample needs for
-- its rates (transaction counts, pg_stat_statements' calls and times). kind 'over' marks the
-- end of the watch, recorded once.
CREATE TABLE IF NOT EXISTS migration_ledger.watch_samples (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text NOT NULL DEFAULT 'sample' CHECK (kind IN ('sample', 'over')),
    taken_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    run_id       uuid NOT NULL,
    metrics      jsonb NOT NULL DEFAULT '{}',
    details      jsonb NOT NULL DEFAULT '{}',
    alerts       jsonb NOT NULL DEFAULT '[]',
    escalations  jsonb NOT NULL DEFAULT '[]',
    counters     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS watch_samples_taken_idx ON migration_ledger.watch_samples (taken_at);
