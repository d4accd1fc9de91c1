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
        variables): C(enabled) (bool, default C(true)), C(probe_sql) (default: the monitoring probe),
        C(probe_max_ms), C(probe_critical_ms), C(active_sessions_max), C(active_sessions_critical),
        C(lock_waiters_max), C(lock_waiters_critical) (C(0), the default, derives the limit from the
        baseline), C(replication_lag_max_s) (default C(5)), C(replication_lag_critical_s) (default
        C(30)), C(check_interval_ms) (default C(500), at least C(10)), C(slow_pause_ms) (default
        C(50)), C(max_pause_s) (default C(900): a longer pause fails the module)."
      - An unknown key or a negative limit is refused before any batch runs.
    type: dict
    default: {}
"""
