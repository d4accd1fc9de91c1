# The throttle option of every batch-running module (THROTTLE_ARG in
# plugins/module_utils/pgmigrate_throttle.py): documented once, here.
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  throttle:
    description:
      - How the batches yield to the application (gh-ost's max-load and critical-load). Between two
        batches the module reads live signals - the monitoring probe's latency, active sessions,
        lock waiters on the written tables, replicas' replay lag - and compares them with the
        pre-migration baseline that phase 1's ledger record keeps. Over a signal's C(max) the batches
        slow down; over its C(critical) limit they pause until every signal is back under it.
      - "Keys (all optional; the migration role builds the dict from the C(migration_throttle_*)
        variables and the migration's manifest): C(enabled) (bool, default C(true)), C(tables) (the
        application's tables the batches write, whose lock waiters are counted besides the engine's
        own; default none: the manifest's C(throttle.tables)), C(probe_sql) (default: none, no probe;
        the migration role passes the manifest's C(monitor.probe)),
        C(probe_max_ms), C(probe_critical_ms), C(active_sessions_max), C(active_sessions_critical),
        C(lock_waiters_max), C(lock_waiters_critical) (C(0), the default, derives the limit from the
        baseline), C(replication_lag_max_s) (default C(5)), C(replication_lag_critical_s) (default
        C(30)), C(check_interval_ms) (default C(500), at least C(10)), C(slow_pause_ms) (default
        C(50)), C(max_pause_s) (default C(900): a longer pause fails the module)."
      - "Sessions on CPU (active, no wait event) against the database's cores: C(db_cpus) (C(0), the
        default: this host's when the database is on it, else C(db_cpus_query)'s answer from
        C(prometheus_url), else C(2)), C(cpu_sessions_max) and C(cpu_sessions_critical) (the
        application's plus the migration's; C(0): the cores, twice the cores),
        C(app_cpu_sessions_critical) (the application's alone; C(0): the cores)."
      - "C(duty_cycle) (default C(0.5), over 0 and at most 1): the most of the wall time each batch
        loop works; after a batch it rests in proportion to the batch's duration (gh-ost's
        nice-ratio)."
      - "The application's own signals from Prometheus, when C(prometheus_url) is given:
        C(app_latency_query) (ms) against its reading at the start (C(app_latency_max_pct) C(50),
        C(app_latency_critical_pct) C(200), or C(app_latency_max_ms), C(app_latency_critical_ms)),
        C(app_rate_query) (requests per second) dropping by C(app_rate_drop_max_pct) C(30) or
        C(app_rate_drop_critical_pct) C(70); read every C(prometheus_interval_s) (C(5)), each
        request within C(prometheus_timeout_s) (C(2))."
      - An unknown key or a negative limit is refused before any batch runs.
    type: dict
    default: {}
"""
